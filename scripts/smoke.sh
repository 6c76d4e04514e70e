#!/usr/bin/env bash
# Checks that a service just deployed works, before the deploy is recorded
# or promoted: a deploy that Copilot calls stable (tasks running, health
# checks passing) only means the processes are live.
#
#   scripts/smoke.sh SERVICE ENV
#
# - producer: GET /health/ready answers 200 with "broker":"reachable" (its
#   database answers, and a broker did at its last check);
# - consumer: GET /health/ready answers 200 (it holds partitions of the
#   event topics, none stalled, and its database answers).
#
# It asks every SMOKE_INTERVAL_SECS (5) until that holds, and fails after
# SMOKE_TIMEOUT_SECS (300), printing the last answer. The address is the
# one Copilot gives the service under the application's domain:
# https://producer.<env>.<app>.<domain> (the Application Load Balancer)
# and https://consumer-nlb.<env>.<app>.<domain> (its Network Load
# Balancer), <env>.<app>.<domain> being the environment stack's export
# <app>-<env>-SubDomain (needs AWS credentials). SMOKE_BASE_URL replaces
# it (an environment without the domain, or a test).
set -euo pipefail
cd "$(dirname "$0")/.."

service=${1:?usage: scripts/smoke.sh SERVICE ENV}
environment=${2:?usage: scripts/smoke.sh SERVICE ENV}
interval=${SMOKE_INTERVAL_SECS:-5}
timeout=${SMOKE_TIMEOUT_SECS:-300}

case $service in
  producer) host=producer ;;
  consumer) host=consumer-nlb ;;
  *) echo "smoke: no check for a service named '$service'" >&2; exit 2 ;;
esac
if [[ -n ${SMOKE_BASE_URL:-} ]]; then
  base=$SMOKE_BASE_URL
else
  app=$(sed -n 's/^application: *//p' deploy/copilot/.workspace)
  subdomain=$(aws cloudformation list-exports \
    --query "Exports[?Name=='$app-$environment-SubDomain'].Value" --output text)
  if [[ -z $subdomain || $subdomain == None ]]; then
    echo "smoke: the environment exports no $app-$environment-SubDomain (an application without a domain: set SMOKE_BASE_URL)" >&2
    exit 2
  fi
  base=https://$host.$subdomain
fi

# Whether the answer shows the service working: status code, then body.
works() {
  local status=$1 body=$2
  [[ $status == 200 ]] || return 1
  case $service in
    producer) python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1]).get("broker") != "reachable")' "$body" 2>/dev/null ;;
    consumer) python3 -c 'import json, sys; sys.exit(json.loads(sys.argv[1]).get("status") != "ready")' "$body" 2>/dev/null ;;
  esac
}

deadline=$((SECONDS + timeout))
body=
status=
while :; do
  response=$(curl --silent --show-error --max-time 10 --write-out '\n%{http_code}' "$base/health/ready" 2>&1) || true
  status=${response##*$'\n'}
  body=${response%$'\n'*}
  if works "$status" "$body"; then
    echo "smoke: $service in $environment works: $base/health/ready answered $status $body" >&2
    exit 0
  fi
  if ((SECONDS >= deadline)); then
    echo "smoke: $service in $environment does not work after ${timeout}s: $base/health/ready answered $status $body" >&2
    exit 1
  fi
  sleep "$interval"
done
