#!/usr/bin/env bash
# The benchmark (bench/src/main.rs): builds both services and the bench in
# release mode, starts PostgreSQL and a fresh single-node Apache Kafka on
# 127.0.0.1:19292 (scripts/broker.sh), whose JVM's CPU it counts as the
# broker's, and measures the raw Kafka client limit, the pipeline,
# end-to-end latency, the HTTP API against the argon2 floor, and memory,
# in one run. Prints a markdown table and writes docs/benchmarks/
# (results.md, results.json, latency.png, throughput.png).
#
#   scripts/bench.sh [--events N] [--rate R] [--seconds S] [--http-seconds S] [--out DIR]
#                    [--raw-only true] [--drain-only true] [--latency-only true] [--queue-capacity N] [--queue-bytes N]
#                    [--outbox-batch N] [--fetch-wait-ms N]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --release --locked -p producer -p consumer -p bench
scripts/postgres.sh
scripts/broker.sh stop --dir .run/bench-broker
rm -rf .run/bench-broker
scripts/broker.sh start --port 19292 --dir .run/bench-broker
trap 'scripts/broker.sh stop --dir .run/bench-broker' EXIT

BENCH_BROKER_PID=$(scripts/broker.sh pid 1 --dir .run/bench-broker) \
  TEST_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19292 \
  TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432} \
  target/release/bench "$@"
