//! Records that no well-behaved Kafka client writes, for tests of the
//! consumer's defences against a hostile or broken peer.
//!
//! rust-rdkafka's safe API only takes header names as `&str`, so it cannot
//! write a header whose name is not UTF-8. The wire format allows any bytes
//! (a header key is a varint-length byte string, KIP-82), librdkafka
//! accepts them (`rd_kafka_header_add` takes a name and its length), and so
//! does the broker: `kcat -H $'\xff=x'` writes one. Reading such a name
//! through rust-rdkafka 0.39 panics (`BorrowedHeaders::try_get` unwraps
//! `CStr::to_str`).

use std::ffi::{c_char, c_void};

use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

/// `headers` with one more header, named by any bytes, appended.
///
/// # Panics
///
/// If librdkafka refuses the header (it refuses only read-only headers,
/// which an [`OwnedHeaders`] never is).
pub fn with_raw_header(headers: OwnedHeaders, name: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    // `OwnedHeaders::as_borrowed` is the librdkafka headers object itself,
    // seen as a `BorrowedHeaders` (rust-rdkafka's message.rs).
    let native = std::ptr::from_ref::<BorrowedHeaders>(headers.as_borrowed())
        .cast_mut()
        .cast::<rdkafka_sys::rd_kafka_headers_t>();
    let (value_ptr, value_len) = value.map_or((std::ptr::null(), 0), |value| (value.as_ptr(), value.len()));
    // SAFETY: `native` is a live, writable headers object owned by
    // `headers`, which outlives the call. librdkafka copies the name and
    // value (of the lengths given) before it returns.
    let error = unsafe {
        rdkafka_sys::rd_kafka_header_add(
            native,
            name.as_ptr().cast::<c_char>(),
            isize::try_from(name.len()).expect("a header name shorter than isize::MAX"),
            value_ptr.cast::<c_void>(),
            isize::try_from(value_len).expect("a header value shorter than isize::MAX"),
        )
    };
    assert_eq!(
        error,
        rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
        "librdkafka refused the header"
    );
    headers
}
