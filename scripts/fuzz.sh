#!/usr/bin/env bash
# Fuzzes the consumer's record decoder (fuzz/fuzz_targets/record_decoder.rs)
# with libFuzzer for a bounded time, FUZZ_SECONDS (default 60). A crash or
# a broken property fails the run and leaves the input in fuzz/artifacts/.
#
# cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain take them (this machine has no other). No sanitizer: the
# decoder is safe Rust, so panics are what there is to find, and the
# librdkafka C code it links is not instrumented.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz --version 0.13.2
fi
seconds=${FUZZ_SECONDS:-60}
mkdir -p fuzz/corpus/record_decoder
echo "fuzz: record_decoder for ${seconds} s" >&2
RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --debug-assertions record_decoder \
  fuzz/corpus/record_decoder -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
  | grep -vE '^(#[0-9]|")' | tail -n 8
