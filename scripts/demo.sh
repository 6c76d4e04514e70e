#!/usr/bin/env bash
# Drives demo traffic through a running system: creates three users, issues
# two tokens each, then shows each user in the consumer's read model.
set -euo pipefail
producer=${PRODUCER_URL:-http://127.0.0.1:9001}
consumer=${CONSUMER_URL:-http://127.0.0.1:9000}
suffix=$(date +%s)

json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

for name in ada grace linus; do
  username="$name-$suffix"
  user=$(curl -fsS -X POST "$producer/users" -H 'content-type: application/json' \
    -d "{\"username\":\"$username\",\"email\":\"$username@example.com\",\"password\":\"demo password\"}")
  id=$(json_field id <<<"$user")
  echo "POST /users            -> $user"
  for _ in 1 2; do
    token=$(curl -fsS -X POST "$producer/auth/token" -H 'content-type: application/json' \
      -d "{\"username\":\"$username\",\"password\":\"demo password\"}" | json_field access_token)
  done
  echo "POST /auth/token (x2)  -> token issued"
  for _ in $(seq 1 50); do
    view=$(curl -fsS "$consumer/users/$id" -H "authorization: Bearer $token")
    [[ $view == *'"tokens_issued":2'* ]] && break
    sleep 0.1
  done
  echo "GET consumer /users/id -> $view"
done
