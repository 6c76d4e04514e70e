#!/usr/bin/env bash
# Where the local broker's CPU goes while the consumer waits for records:
# starts a fresh Nisshi on 127.0.0.1:19392 and the release-built consumer
# (local configuration, its fetch wait from the first argument, default
# 10 ms), lets the group settle, then samples Nisshi with `perf record` for
# 10 s and prints its CPU use, the share of its samples by kind of work,
# and its busiest functions. docs/benchmarks.md explains the result.
#
#   scripts/profile-broker.sh [FETCH_WAIT_MS]
#
# Needs perf (Debian's linux-perf, installed here when missing) and
# PostgreSQL on 127.0.0.1:5432 (scripts/postgres.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

fetch_wait_ms=${1:-10}
port=19392
data_dir=.run/profile-broker
out=.run/profile
mkdir -p "$out"

if ! command -v perf >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null
fi
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --release --locked -p consumer
scripts/postgres.sh
scripts/broker.sh stop "$port" "$data_dir"
rm -rf "$data_dir"
scripts/broker.sh start "$port" "$data_dir"

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
  scripts/broker.sh stop "$port" "$data_dir"
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS consumer_profile" postgres || true
}
trap cleanup EXIT
sleep 10

broker=$(cat "$data_dir/nisshi.pid")
ticks() { awk '{print $14 + $15}' "/proc/$broker/stat"; }
before=$(ticks)
perf record -q -F 499 -p "$broker" -o "$out/nisshi.perf" -- sleep 10 2>/dev/null
# Clock ticks of 1/100 s (USER_HZ) over 10 s: a tenth of them is the share
# of one core, in percent.
used=$(( ($(ticks) - before) / 10 ))
echo "broker CPU with the consumer idle, fetch.wait.max.ms=$fetch_wait_ms: $used % of one core over 10 s"

# The share of samples by kind of work, from the function names: SQLite
# compiling statements (tokenizer, parser, name resolution, query planner,
# code generation), SQLite executing them (the VDBE, B-trees, page cache),
# memory allocation, mutexes, the kernel, and the rest (Nisshi, Tokio, ...).
perf report -i "$out/nisshi.perf" --no-children --sort dso,symbol --stdio -g none 2>/dev/null >"$out/nisshi.txt"
grep -E '^ +[0-9]' "$out/nisshi.txt" | awk '
  { share = $1; sub("%", "", share); dso = $2; symbol = $4; kind = "other (Nisshi, Tokio, ...)" }
  dso ~ /kernel/ { kind = "kernel" }
  dso !~ /kernel/ && symbol ~ /^(where|yy_|resolve|sqlite3RunParser|sqlite3GetToken|keywordCode|exprAnalyze|sqlite3Expr|sqlite3Select|sqlite3Walk|selectExpander|sqlite3PExpr|exprDup|exprList|tokenExpr|propagateConstant|codeEquality|termCanDrive|sqlite3FindFunction|sqlite3SrcList|sqlite3KeyInfo|findElementWithHash|sqlite3Vdbe(AddOp|MakeReady|Change|Resolve|Jump)|sqlite3Prepare|sqlite3LockAndPrepare|heightOf|clearSelect|sqlite3Resolve|sqlite3Locate|sqlite3CodeVerify|sqlite3TableLock|sqlite3(Get|Release)TempReg|sqlite3NameFromToken|sqlite3Dequote|flattenSubquery|pushDown|multiSelect|selectInnerLoop|computeLimit|generateColumn|sqlite3ColumnsFrom)/ { kind = "SQLite compiling statements" }
  dso !~ /kernel/ && symbol ~ /^(sqlite3VdbeExec|sqlite3Btree|pcache|getCellInfo|sqlite3VdbeMem|sqlite3Pager|moveTo|btree|sqlite3VdbeRecord|sqlite3VdbeSerial|sqlite3_step|sqlite3Step|sqlite3VdbeHalt|sqlite3VdbeReset|releaseMemArray|sqlite3VdbeCursor)/ { kind = "SQLite executing statements" }
  dso !~ /kernel/ && symbol ~ /(malloc|free|_int_|unlink_chunk|realloc|Malloc|dbMallocRaw|sqlite3DbFree)/ { kind = "memory allocation" }
  dso !~ /kernel/ && symbol ~ /pthread_mutex/ { kind = "mutexes" }
  { total[kind] += share }
  END { for (kind in total) printf "%5.1f %%  %s\n", total[kind], kind }
' | sort -rn
echo "busiest functions ($out/nisshi.txt has them all):"
grep -E '^ +[0-9]' "$out/nisshi.txt" | head -12 | awk '{printf "  %s %s\n", $1, $4}'
