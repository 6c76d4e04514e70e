#!/usr/bin/env bash
# Installs (if missing), starts, or stops a local Nisshi broker on loopback.
#
#   scripts/broker.sh install
#   scripts/broker.sh start [PORT] [DATA_DIR] [-- NISSHI_BROKER_FLAGS...]
#                                               default 9092 .run/broker
#   scripts/broker.sh stop  [PORT] [DATA_DIR]
#
# Nisshi (Tansu's successor) is a Kafka-compatible broker written in Rust.
# Facts that shape this script (0.8.1):
# - it needs Rust 1.96 or newer to build (its `rama` dependency), so the
#   install uses the first toolchain that is new enough: the default one,
#   then `+stable`, then `+nightly`;
# - it listens on all interfaces and advertises localhost:9092 unless told
#   otherwise, so both listener URLs are always given;
# - SQLite storage (`sqlite://nisshi.db`, relative to its working
#   directory, here DATA_DIR): its PostgreSQL engine consumed 222
#   records/s here (docs/benchmarks.md);
# - it reads a `.env` file in its working directory, so it runs in DATA_DIR
#   (which has none) rather than in the repository.
# Extra flags after `--` go to `nisshi broker`, e.g. `--cert` and `--key`.
set -euo pipefail

NISSHI_VERSION=0.8.1
NISSHI_MIN_RUST=1.96
command=${1:?usage: scripts/broker.sh install|start|stop [PORT] [DATA_DIR]}
shift
port=9092
data_dir=
if [[ $# -gt 0 && $1 != -- ]]; then port=$1; shift; fi
if [[ $# -gt 0 && $1 != -- ]]; then data_dir=$1; shift; fi
if [[ $# -gt 0 && $1 == -- ]]; then shift; fi
root=$(cd "$(dirname "$0")/.." && pwd)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# `rustc [+TOOLCHAIN] --version` is at least NISSHI_MIN_RUST.
new_enough() {
  local version
  version=$(rustc "$@" --version 2>/dev/null | awk '{print $2}') || return 1
  [[ -n $version ]] || return 1
  [[ $(printf '%s\n%s\n' "$NISSHI_MIN_RUST" "${version%%-*}" | sort -V | head -n1) == "$NISSHI_MIN_RUST" ]]
}

install_nisshi() {
  if command -v nisshi >/dev/null 2>&1 && [[ $(nisshi --version 2>/dev/null) == "nisshi $NISSHI_VERSION" ]]; then
    return 0
  fi
  local toolchain=
  if new_enough; then
    toolchain=
  elif new_enough +stable; then
    toolchain=+stable
  elif new_enough +nightly; then
    toolchain=+nightly
  else
    echo "broker: nisshi $NISSHI_VERSION needs Rust $NISSHI_MIN_RUST or newer to build;" \
      "this machine has $(rustc --version 2>/dev/null || echo 'no rustc')" \
      "and no newer stable or nightly toolchain." \
      "Install one (\`rustup toolchain install stable\`) and run this again." >&2
    exit 1
  fi
  echo "broker: installing nisshi $NISSHI_VERSION with $(rustc $toolchain --version)" \
    "(cargo install, about 11 minutes on two cores, once)" >&2
  # shellcheck disable=SC2086 # an empty toolchain must vanish
  cargo $toolchain install --locked nisshi --version "$NISSHI_VERSION"
}

case $command in
  install)
    install_nisshi
    ;;
  start)
    data_dir=${data_dir:-$root/.run/broker}
    mkdir -p "$data_dir"
    data_dir=$(cd "$data_dir" && pwd)
    if port_open "$port"; then
      echo "broker: already listening on 127.0.0.1:$port" >&2
      exit 0
    fi
    install_nisshi
    cd "$data_dir"
    nohup nisshi broker \
      --storage-engine sqlite://nisshi.db \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      "$@" \
      >"$data_dir/nisshi.log" 2>&1 &
    echo $! >"$data_dir/nisshi.pid"
    for _ in $(seq 1 100); do
      if port_open "$port"; then
        echo "broker: nisshi listening on 127.0.0.1:$port (data in $data_dir)" >&2
        exit 0
      fi
      if ! kill -0 "$(cat "$data_dir/nisshi.pid")" 2>/dev/null; then break; fi
      sleep 0.1
    done
    echo "broker: nisshi did not start; see $data_dir/nisshi.log:" >&2
    tail -n 20 "$data_dir/nisshi.log" >&2
    exit 1
    ;;
  stop)
    data_dir=${data_dir:-$root/.run/broker}
    pid_file=$data_dir/nisshi.pid
    # Waits for the process itself, not only the port: it closes its
    # listener before it exits, and the benchmark counts the CPU of every
    # process named nisshi.
    if [[ -f $pid_file ]] && pid=$(cat "$pid_file") && kill "$pid" 2>/dev/null; then
      rm -f "$pid_file"
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { echo "broker: stopped" >&2; exit 0; }
        sleep 0.1
      done
      echo "broker: pid $pid still running 10 s after SIGTERM" >&2
      exit 1
    fi
    rm -f "$pid_file"
    ;;
  *)
    echo "usage: scripts/broker.sh install|start|stop [PORT] [DATA_DIR]" >&2
    exit 2
    ;;
esac
