//! `GET /events/stream`: the live feed as Server-Sent Events, and `GET
//! /feed`, a page that shows it. See [`crate::feed`].

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use anyhow::Context;
use service_common::auth::{Authenticated, Principal};
use service_common::http::ErrorBody;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::feed::{self, Feed};
use crate::inbox;

/// Cancelled when the service begins to shut down: every stream ends.
#[derive(Clone)]
pub struct StreamsClosed(pub CancellationToken);

/// Streams every event the consumer applies from now on (or, with
/// `Last-Event-ID`, from after that event), as `text/event-stream`: one
/// frame per event (`id` = its sequence, `event` = its `ce_type`, `data` =
/// a [`feed::FeedEvent`]), a comment every 15 s, `retry: 2000`. A service
/// credential sees every user's events, a user token only its own. A
/// client that falls 1024 events behind is disconnected and may resume.
/// A resume can replay only what the deduplication window still holds
/// (`inbox.retention`, 31 days by default); from before it the answer is
/// `410`, and the client reloads its state (`GET /users/{id}`) and
/// connects without `Last-Event-ID`.
#[utoipa::path(
    get,
    path = "/events/stream",
    tag = "events",
    params(("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event (its `id`)")),
    security(("bearer" = [])),
    responses(
        (
            status = 200,
            description = "Server-Sent Events: `id: <sequence>`, `event: <ce_type>`, `data: <FeedEvent JSON>`",
            content_type = "text/event-stream",
            body = String
        ),
        (status = 400, description = "`invalid_header`: a `Last-Event-ID` that is not an id this feed gave", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid token", body = ErrorBody),
        (status = 410, description = "`replay_window_passed`: events after `Last-Event-ID` were deleted by retention (`inbox.retention`); reload the state and connect without it", body = ErrorBody),
    )
)]
pub async fn stream(
    Authenticated(caller): Authenticated,
    request: HttpRequest,
    pool: web::Data<PgPool>,
    feed: web::Data<Feed>,
    closed: web::Data<StreamsClosed>,
) -> Result<HttpResponse, ApiError> {
    let after = match request.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .filter(|id| *id >= 0)
                .ok_or(ApiError::InvalidHeader(
                    "Last-Event-ID must be an event id this feed sent",
                ))?,
        ),
    };
    if let Some(after) = after {
        let pruned = inbox::pruned_through(pool.get_ref())
            .await
            .context("could not read the replay window")?;
        if let Some(through) = pruned.filter(|&through| after < through) {
            return Err(ApiError::ReplayWindowPassed(format!(
                "events after {after} can no longer be replayed: retention deleted them up to {through} \
                 (inbox.retention); reload the state and connect without Last-Event-ID"
            )));
        }
    }
    let user = match caller {
        Principal::Service(_) => None,
        Principal::User(id) => Some(id),
    };
    // Subscribe before any replay, so nothing applied meanwhile is lost.
    let live = feed.subscribe();
    let frames = feed::stream(pool.get_ref().clone(), live, user, after, closed.0.child_token());
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(frames))
}

/// Content-Security-Policy of the page: its own script and stylesheet, and
/// requests to this service only.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                           base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /feed`: a page that shows the live feed. It reads the token from
/// the URL's fragment (`/feed#token=...`, never sent to a server) or a
/// form, and keeps it in memory only.
pub async fn page() -> HttpResponse {
    static_file("text/html; charset=utf-8", include_str!("../../static/feed.html"))
}

/// `GET /feed.js`.
pub async fn script() -> HttpResponse {
    static_file("text/javascript; charset=utf-8", include_str!("../../static/feed.js"))
}

/// `GET /feed.css`.
pub async fn stylesheet() -> HttpResponse {
    static_file("text/css; charset=utf-8", include_str!("../../static/feed.css"))
}

fn static_file(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}
