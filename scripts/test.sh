#!/usr/bin/env bash
# Runs every test: the offline validators of the deployment files; unit
# tests, API tests and end-to-end tests; a short soak under random faults
# (scripts/soak.sh); then schemathesis against both services' APIs (scripts/api-fuzz.sh) and libFuzzer against the record
# decoder (scripts/fuzz.sh). All against a real
# broker (Apache Kafka on 127.0.0.1:19092, installed and started here by
# scripts/broker.sh and stopped at the end) and PostgreSQL on 127.0.0.1:5432
# (scripts/postgres.sh starts one if none answers). Tests that stop brokers,
# or need TLS or a three-broker cluster, start brokers of their own through
# the same script.
#
# Override with TEST_KAFKA_BOOTSTRAP_SERVERS (then no broker is started) and
# TEST_DATABASE_URL (a server URL without database name; tests create and
# drop their own databases).
set -euo pipefail
cd "$(dirname "$0")/.."

# The deployment and CI files, offline (installs pinned validators once),
# and the dependency policy.
scripts/validate.sh
scripts/deny.sh

scripts/postgres.sh
if [[ -z ${TEST_KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
  # Every test names its own topics and group, so the broker's data from
  # earlier runs does not matter and is kept.
  scripts/broker.sh start --port 19092 --dir .run/test-broker
  trap 'scripts/broker.sh stop --dir .run/test-broker' EXIT
  export TEST_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092
fi
export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

# The failure tests run the services as processes (to SIGKILL them), so the
# binaries must be current; `cargo test` alone does not build them.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
# The consumer group tests again, under KIP-848's protocol
# (kafka.group_protocol: consumer; the run above used classic).
# --workspace, as above: `-p e2e` would resolve features differently and
# rebuild half the dependency graph.
TEST_KAFKA_GROUP_PROTOCOL=consumer cargo test --workspace --locked --test failures rebalances

# The soak (docs/delivery.md, "The soak"): random faults on a three-broker
# cluster under traffic, then the history checker; once with a fixed seed,
# once with a fresh one that it prints, so that a failure can be replayed.
scripts/soak.sh --minutes 2 --seed 20261203 --out .run/soak/fixed
scripts/soak.sh --minutes 2

# Hostile HTTP input against both services, from their OpenAPI documents.
scripts/api-fuzz.sh

# Arbitrary records against the consumer's record decoder, for a minute.
scripts/fuzz.sh
