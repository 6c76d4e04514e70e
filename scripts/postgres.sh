#!/usr/bin/env bash
# Makes PostgreSQL answer on 127.0.0.1:5432 for user `postgres` without a
# password, as the local configuration (postgres://postgres@127.0.0.1:5432)
# and the tests expect. The services create their own databases
# (database.create_if_missing in the local configuration).
#
#   scripts/postgres.sh [start] [--port P] [--dir D]   start (or find) the server
#   scripts/postgres.sh stop [--dir D]                 stop the server this script started
#   scripts/postgres.sh restart [--dir D]              stop it (fast: open transactions
#                                                      are rolled back) and start it again
#
# --port (default 5432) and --dir (default PGDATA_DIR) give a cluster of its
# own, e.g. the soak's (scripts/soak.sh), which restarts it as a fault.
#
# If a server already answers on 127.0.0.1:5432 it is used as it is. If not,
# this starts a PostgreSQL cluster of the project's own, from the installed
# server binaries: created once with `initdb` in PGDATA_DIR (default
# /var/tmp/kafka-example-postgres), trusting connections from this machine's
# loopback addresses only, and listening on 127.0.0.1 only. That is the least
# intrusive way on a Debian machine: its own cluster (`main`) asks for a
# password on 127.0.0.1 (scram-sha-256), and making it trust `postgres`
# would mean editing its pg_hba.conf or setting the role's password, which
# changes the machine's server for everyone else. Debian's cluster is left
# stopped and untouched; the project's data lives only in PGDATA_DIR.
#
# As root, the server runs as the `postgres` system user (PostgreSQL refuses
# to run as root); where PostgreSQL is not installed, root installs Debian's
# `postgresql` package, and anyone else is told how.
set -euo pipefail

data_dir=${PGDATA_DIR:-/var/tmp/kafka-example-postgres}
port=5432
command=start
[[ ${1:-} != --* && -n ${1:-} ]] && { command=$1; shift; }
while (($#)); do
  case $1 in
    --port) port=$2; shift 2 ;;
    --dir) data_dir=$2; shift 2 ;;
    *) echo "postgres: unknown option $1" >&2; exit 2 ;;
  esac
done
data_dir=$(realpath -m "$data_dir")

die() {
  echo "postgres: $*" >&2
  exit 1
}

answers() { pg_isready -q -h 127.0.0.1 -p "$port" 2>/dev/null; }

# The newest installed server's bin directory (Debian keeps each major
# version in /usr/lib/postgresql/N/bin), or `pg_config --bindir`.
server_bin() {
  local bin
  bin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
  [[ -z $bin ]] && command -v pg_config >/dev/null 2>&1 && bin=$(pg_config --bindir)
  [[ -n $bin && -x $bin/initdb ]] && echo "$bin"
}

# Runs a command as the server's owner: `postgres` when we are root.
as_owner() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

install_server() {
  if ((EUID != 0)); then
    die "PostgreSQL's server is not installed; install it with \`sudo apt-get install postgresql\` (Debian) and run this again"
  fi
  echo "postgres: installing Debian's postgresql package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

start() {
  if answers; then
    check_trust
    return 0
  fi
  local bin
  bin=$(server_bin) || { install_server && bin=$(server_bin); } || die "no initdb found after installing PostgreSQL"
  answers && { check_trust; return 0; } # the package may have started its own cluster
  if [[ ! -f $data_dir/PG_VERSION ]]; then
    echo "postgres: creating the project's cluster in $data_dir" >&2
    mkdir -p "$data_dir"
    ((EUID == 0)) && chown postgres: "$data_dir"
    # trust for loopback TCP and the cluster's own socket only; nothing
    # else can reach a server that listens on 127.0.0.1.
    as_owner "$bin/initdb" -D "$data_dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  as_owner "$bin/pg_ctl" -D "$data_dir" -l "$data_dir/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $data_dir" start >/dev/null ||
    { tail -n 20 "$data_dir/server.log" >&2; die "the server did not start; its log is $data_dir/server.log (above)"; }
  answers || die "the server started but nothing answers on 127.0.0.1:$port"
  echo "postgres: $("$bin/postgres" --version) on 127.0.0.1:$port (data in $data_dir)" >&2
}

# A server that was already running must let `postgres` in without a
# password; say how to fix it when it does not.
check_trust() {
  psql -w -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 && return 0
  die "a server answers on 127.0.0.1:$port but user postgres cannot log in without a password." \
    "Stop it (e.g. \`pg_ctlcluster 15 main stop\`) so that this script starts the project's own," \
    "or allow it: a pg_hba.conf line \`host all postgres 127.0.0.1/32 trust\`."
}

stop() {
  local bin
  bin=$(server_bin) || return 0
  [[ -f $data_dir/postmaster.pid ]] && as_owner "$bin/pg_ctl" -D "$data_dir" -m fast stop >/dev/null
  return 0
}

case $command in
  start) start ;;
  stop) stop ;;
  restart)
    [[ -f $data_dir/postmaster.pid ]] || die "no server of this script runs in $data_dir"
    port=$(sed -n 4p "$data_dir/postmaster.pid")
    stop
    start
    ;;
  *)
    echo "usage: scripts/postgres.sh [start|stop|restart] [--port P] [--dir D]" >&2
    exit 2
    ;;
esac
