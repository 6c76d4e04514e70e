#!/usr/bin/env bash
# Hostile input against both services' HTTP APIs: schemathesis generates
# requests from the checked-in OpenAPI documents (docs/openapi/), valid and
# invalid, and checks every answer: no 5xx, every status code and header
# documented, every body matching its schema.
#
# Runs the debug binaries (built by scripts/test.sh) on loopback ports
# against the broker at TEST_KAFKA_BOOTSTRAP_SERVERS and PostgreSQL at
# TEST_DATABASE_URL, with databases of their own. Installs schemathesis
# (pinned, PyPI) into .run/schemathesis on first use. Bounded: a fixed
# number of examples per operation and a fixed seed.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TEST_KAFKA_BOOTSTRAP_SERVERS:?the broker to use, e.g. 127.0.0.1:19092}"
database_server=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
examples=${API_FUZZ_EXAMPLES:-60}
seed=${API_FUZZ_SEED:-20261122}

# schemathesis needs Python 3.12 or newer here. It runs Hypothesis in
# threads, and CPython 3.11 keeps the AST constructor's recursion depth in
# process-wide state: two threads parsing at once fail one of them with
# "SystemError: AST constructor recursion depth mismatch" (cpython
# gh-106905), which schemathesis reports as a runtime error of whatever
# operation it was generating (seen here once, on POST /parked/dead-letter,
# under 3.11.7). The machine's python3 if new enough (GitHub's Ubuntu 24.04
# has 3.12), else the newest pyenv Python that is.
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
fuzz_python() {
  if new_enough python3; then
    echo python3
    return
  fi
  if command -v pyenv >/dev/null; then
    local version
    version=$(pyenv versions --bare | grep -E '^3\.(1[2-9]|[2-9][0-9])\.[0-9]+$' | sort -V | tail -n 1)
    if [[ -n $version ]] && new_enough "$(pyenv prefix "$version")/bin/python3"; then
      echo "$(pyenv prefix "$version")/bin/python3"
      return
    fi
  fi
  echo "api-fuzz: needs Python 3.12 or newer for schemathesis (python3 is $(python3 --version 2>&1))" >&2
  return 1
}

tools=.run/schemathesis
if [[ -x $tools/bin/schemathesis ]] && ! new_enough "$tools/bin/python"; then
  echo "api-fuzz: $tools was made with Python older than 3.12; making it again" >&2
  rm -rf "$tools"
fi
if [[ ! -x $tools/bin/schemathesis ]]; then
  python=$(fuzz_python)
  echo "api-fuzz: installing schemathesis into $tools ($("$python" --version))" >&2
  "$python" -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
run_id=$(date +%s)$$
producer_port=$(free_port)
consumer_port=$(free_port)
logs=.run/api-fuzz
mkdir -p "$logs"
pids=()
# shellcheck disable=SC2329 # invoked by the trap
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in "fuzz_producer_$run_id" "fuzz_consumer_$run_id"; do
    psql "$database_server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# Both on loopback; every topic name and the group unique to this run.
export APP_HTTP__HOST=127.0.0.1
export APP_KAFKA__BOOTSTRAP_SERVERS=$TEST_KAFKA_BOOTSTRAP_SERVERS
export APP_KAFKA__TOPICS__NEW_USER_CREATED__NAME=fuzz-new-user-created-$run_id
export APP_KAFKA__TOPICS__ISSUED_TOKEN__NAME=fuzz-issued-token-$run_id
export APP_KAFKA__TOPICS__RETRY__NAME=fuzz-retry-$run_id
export APP_KAFKA__TOPICS__DEAD_LETTER__NAME=fuzz-dead-letter-$run_id
# Generated logins would otherwise spend the attempt budget at once; the
# limits have their own test.
export APP_LOGIN_LIMIT__PER_ADDRESS_PER_MINUTE=1000000
export APP_LOGIN_LIMIT__PER_USERNAME_PER_MINUTE=1000000

APP_HTTP__PORT=$producer_port APP_DATABASE__URL="$database_server/fuzz_producer_$run_id" \
  target/debug/producer >"$logs/producer.log" 2>&1 &
pids+=($!)
APP_HTTP__PORT=$consumer_port APP_DATABASE__URL="$database_server/fuzz_consumer_$run_id" \
  APP_KAFKA__GROUP_ID="fuzz-$run_id" APP_PRODUCER__BASE_URL="http://127.0.0.1:$producer_port" \
  target/debug/consumer >"$logs/consumer.log" 2>&1 &
pids+=($!)

for port in "$producer_port" "$consumer_port"; do
  for attempt in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null && break
    if [[ $attempt == 120 ]]; then echo "api-fuzz: nothing ready on $port; see $logs/" >&2; exit 1; fi
    sleep 0.5
  done
done

# A user token (for the producer's user read) and a service credential
# (for the consumer's operator endpoints).
producer=http://127.0.0.1:$producer_port
curl -fs "$producer/users" -H 'content-type: application/json' \
  -d '{"username": "fuzz-user", "email": "fuzz@example.com", "password": "a long enough password"}' >/dev/null
user_token=$(curl -fs "$producer/auth/token" -H 'content-type: application/json' \
  -d '{"username": "fuzz-user", "password": "a long enough password"}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
service_token=$(APP_DATABASE__URL=unused target/debug/consumer service-token)

# The live feed (/events/stream) is a response that never ends: it has its
# own tests (tests/e2e/tests/system/feed.rs, tests/e2e/tests/browser.rs).
fuzz() {
  local name=$1 port=$2 token=$3
  echo "api-fuzz: $name (http://127.0.0.1:$port, $examples examples per operation, seed $seed)" >&2
  "$tools/bin/schemathesis" run "docs/openapi/$name.json" \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "$examples" --seed "$seed" --generation-deterministic \
    --workers 2 --request-timeout 10 --no-color \
    --exclude-path /events/stream \
    --report junit --report-dir "$logs/$name"
}
status=0
fuzz producer "$producer_port" "$user_token" || status=1
fuzz consumer "$consumer_port" "$service_token" || status=1
# Hostile input is the client's error: nothing may be logged as ours.
if grep -q 'ERROR' "$logs"/*.log; then
  echo "api-fuzz: a service logged an error; see $logs/" >&2
  grep -h 'ERROR' "$logs"/*.log | head -5 >&2
  status=1
fi
exit $status
