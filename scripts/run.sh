#!/usr/bin/env bash
# Runs the whole system on this machine: installs Apache Kafka if missing
# (scripts/broker.sh), starts it and PostgreSQL (scripts/postgres.sh),
# builds and starts both services (release), and drives demo traffic
# through them. Ctrl-C stops everything.
#
# Ports: broker 9092, producer 9001, consumer 9000, all on 127.0.0.1.
# Logs: .run/producer.log, .run/consumer.log, .run/broker/node-1/kafka.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run

scripts/postgres.sh
scripts/broker.sh start --port 9092 --dir .run/broker
cargo build --release --locked -p producer -p consumer

pids=()
stop() {
  echo "stopping services and broker..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  scripts/broker.sh stop --dir .run/broker
}
trap stop EXIT INT TERM

target/release/producer >.run/producer.log 2>&1 &
pids+=($!)
target/release/consumer >.run/consumer.log 2>&1 &
pids+=($!)

wait_ready() {
  for _ in $(seq 1 100); do
    curl -fs "$1/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$1 did not become ready; see .run/*.log" >&2
  exit 1
}
wait_ready http://127.0.0.1:9001
wait_ready http://127.0.0.1:9000
echo "producer on http://127.0.0.1:9001, consumer on http://127.0.0.1:9000"

scripts/demo.sh

if [[ ${1:-} == --demo-only ]]; then exit 0; fi
echo "system running; Ctrl-C stops it (logs in .run/)"
wait
