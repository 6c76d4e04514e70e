#!/usr/bin/env bash
# Installs (if missing), starts, or stops a local Tansu broker on loopback.
#
#   scripts/broker.sh start [PORT] [DATA_DIR]   default 9092 .run/broker
#   scripts/broker.sh stop  [PORT] [DATA_DIR]
#
# Tansu is a Kafka-compatible broker written in Rust. Facts that shape this
# script (measured with 0.6.0): it must be built with the libsql feature and
# run with SQLite storage (its memory storage loses offsets inside
# multi-record batches); it listens on all interfaces unless told otherwise,
# so both listener URLs are always given.
set -euo pipefail

TANSU_VERSION=0.6.0
command=${1:?usage: scripts/broker.sh start|stop [PORT] [DATA_DIR]}
port=${2:-9092}
root=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${3:-$root/.run/broker}
mkdir -p "$data_dir"
data_dir=$(cd "$data_dir" && pwd)
pid_file=$data_dir/tansu.pid

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_tansu() {
  if ! command -v tansu >/dev/null 2>&1; then
    echo "broker: installing tansu $TANSU_VERSION (cargo install, takes several minutes once)" >&2
    cargo install --locked tansu --version "$TANSU_VERSION" --features libsql
  fi
}

# Tansu 0.6 keeps record headers in a table without an index
# (tansu-storage ddl/040-header.sql) and reads them with one query per
# record (sql/header_fetch.sql), so every fetched record scans every header
# stored so far, and consuming slows down as the broker fills up. Measured
# with scripts/bench.sh: 1.9 ms of broker CPU per record consumed once it
# held 5 000 records, 9.5 ms per event through the pipeline once it held
# 10 000 more; 0.04 ms with this index. The index changes no data; Tansu
# created the table when it started.
index_headers() {
  python3 - "$data_dir/tansu.db" <<'PY'
import sqlite3, sys
with sqlite3.connect(sys.argv[1], timeout=10) as db:
    db.execute("CREATE INDEX IF NOT EXISTS header_record ON header (topition, offset_id)")
PY
}

case $command in
  start)
    if port_open "$port"; then
      echo "broker: already listening on 127.0.0.1:$port" >&2
      exit 0
    fi
    install_tansu
    cd "$data_dir"
    nohup tansu broker \
      --storage-engine sqlite://tansu.db \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      >"$data_dir/tansu.log" 2>&1 &
    echo $! >"$pid_file"
    for _ in $(seq 1 100); do
      if port_open "$port"; then
        index_headers
        echo "broker: tansu listening on 127.0.0.1:$port (data in $data_dir)" >&2
        exit 0
      fi
      sleep 0.1
    done
    echo "broker: tansu did not start; see $data_dir/tansu.log" >&2
    exit 1
    ;;
  stop)
    # Waits for the process itself, not only the port: it closes its
    # listener before it exits, and the benchmark counts the CPU of every
    # process named tansu.
    if [[ -f $pid_file ]] && pid=$(cat "$pid_file") && kill "$pid" 2>/dev/null; then
      rm -f "$pid_file"
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { echo "broker: stopped" >&2; exit 0; }
        sleep 0.1
      done
      echo "broker: pid $pid still running 10 s after SIGTERM" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: scripts/broker.sh start|stop [PORT] [DATA_DIR]" >&2
    exit 2
    ;;
esac
