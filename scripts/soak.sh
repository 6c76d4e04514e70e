#!/usr/bin/env bash
# The soak (tests/soak): the whole deployment on this machine (a
# three-broker Apache Kafka cluster, PostgreSQL of its own, two producers,
# three consumers) under steady HTTP traffic and random faults drawn from a
# seed, then a history checker. It writes report.md and report.json and
# exits non-zero on any violation. docs/delivery.md ("The soak") says what
# it injects and checks.
#
#   scripts/soak.sh [--minutes N] [--seed S] [--out DIR]
#
# --minutes: how long faults are injected (default 3; the first round, one
# fault of every kind, always runs whole). --seed: replays a run (default:
# a fresh one, printed). --out: where the report goes (default
# .run/soak/<seed>).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# Debug builds, as the tests use: scripts/test.sh has built them already.
# --workspace, as there: `-p` would resolve features differently and build
# half the dependency graph a second time.
cargo build --locked --workspace --bins
target/debug/soak "$@"
