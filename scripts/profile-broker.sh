#!/usr/bin/env bash
# Where the local broker's CPU goes: starts a fresh single-node Apache Kafka
# on 127.0.0.1:19392 and the release-built consumer (local configuration,
# its fetch wait from the first argument, default 500 ms, librdkafka's),
# lets the group settle, then measures the broker's JVM for 10 s: its CPU
# use and the busiest of its threads by name (Kafka names them for their
# work: network processors, request handlers, the controller, log
# cleaner, GC). docs/benchmarks.md explains the result.
#
#   scripts/profile-broker.sh [FETCH_WAIT_MS]
#
# Needs PostgreSQL on 127.0.0.1:5432 (scripts/postgres.sh starts it).
set -euo pipefail
cd "$(dirname "$0")/.."

fetch_wait_ms=${1:-500}
port=19392
data_dir=.run/profile-broker
out=.run/profile
mkdir -p "$out"

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --release --locked -p consumer
scripts/postgres.sh
scripts/broker.sh stop --dir "$data_dir"
rm -rf "$data_dir"
scripts/broker.sh start --port "$port" --dir "$data_dir"

APP_ENVIRONMENT=local \
  APP_HTTP__PORT=19502 \
  APP_DATABASE__URL=postgres://postgres@127.0.0.1:5432/consumer_profile \
  APP_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$port \
  APP_KAFKA__FETCH_WAIT_MAX_MS=$fetch_wait_ms \
  RUST_LOG=warn \
  target/release/consumer >"$out/consumer.log" 2>&1 &
consumer=$!
cleanup() {
  kill "$consumer" 2>/dev/null || true
  wait "$consumer" 2>/dev/null || true
  scripts/broker.sh stop --dir "$data_dir"
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS consumer_profile" postgres || true
}
trap cleanup EXIT
sleep 10

broker=$(scripts/broker.sh pid 1 --dir "$data_dir")
# "<tid> <ticks> <thread name>" for each of the JVM's threads: user and
# system time (fields 14 and 15 of /proc/<pid>/task/<tid>/stat, in clock
# ticks of 1/100 s) and the name between the parentheses.
threads() {
  for stat in /proc/"$broker"/task/*/stat; do
    sed -E 's/^([0-9]+) \((.*)\) (.*)$/\1 \3 \2/' "$stat" 2>/dev/null
  done | awk '{ name = $52; for (i = 53; i <= NF; i++) name = name " " $i; print $1, $13 + $14, name }'
}
threads >"$out/before.txt"
sleep 10
threads >"$out/after.txt"

# Ticks over 10 s: a tenth of them is the share of one core, in percent.
awk 'NR == FNR { before[$1] = $2; next }
  { used = ($2 - before[$1]) / 10; total += used
    name = $3; for (i = 4; i <= NF; i++) name = name " " $i
    if (used > 0) printf "%6.1f %%  %s\n", used, name }
  END { printf "%6.1f %%  all threads\n", total }' "$out/before.txt" "$out/after.txt" |
  sort -rn >"$out/broker-threads.txt"
echo "broker CPU with the consumer idle, fetch.wait.max.ms=$fetch_wait_ms, over 10 s (share of one core):"
head -n 13 "$out/broker-threads.txt"
