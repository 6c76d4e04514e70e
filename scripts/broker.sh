#!/usr/bin/env bash
# Apache Kafka (KRaft) on loopback, from its jars on Maven Central: one
# combined broker and controller, or a cluster of three.
#
#   scripts/broker.sh install
#   scripts/broker.sh start [--nodes 1|3] [--port P] [--controller-port C]
#                           [--dir DIR] [--tls CERT_PEM KEY_PEM CA_PEM]
#   scripts/broker.sh stop  [--dir DIR] [--now]
#   scripts/broker.sh kill|pause|resume NODE_ID [--dir DIR]
#   scripts/broker.sh pid NODE_ID [--dir DIR]
#
# Defaults: one node, client port 9092, controller port client + 100, data
# in .run/broker. Node n (1, 2, 3) listens for clients on P + n - 1 and for
# the controller quorum on C + n - 1; its files are in DIR/node-n (data/,
# kafka.log, server.properties, pid).
#
# - install fetches the broker's jars through Maven into a cache outside
#   the repository (KAFKA_CACHE_DIR, default ~/.cache/kafka-example/) once
#   per machine; a second run finds them and costs nothing.
# - start formats each node's storage on its first start, starts every node
#   that is not running (so after `kill 2`, `start` brings node 2 back), and
#   waits until every client port is open: Kafka opens it only once the
#   broker is registered and unfenced, so an open port means ready. A node
#   that exits first is reported with its log.
# - stop sends SIGTERM (a controlled shutdown) and waits up to 30 s, then
#   SIGKILL; --now sends SIGKILL at once.
# - kill sends SIGKILL to one node, pause SIGSTOP, resume SIGCONT.
# - --tls makes the client listener TLS-only, with a PEM keystore made of
#   the certificate chain and the unencrypted PKCS#8 key (give the broker a
#   certificate for 127.0.0.1: librdkafka checks the host name), and the CA
#   that signed it as the truststore: Kafka refuses to start unless its own
#   truststore accepts its certificate (SslFactory's validation), and
#   brokers use it for each other.
#
# Settings that differ from Kafka's defaults, and why, are in server_config
# below; docs/config/topics.md compares them with the broker that
# compose.yaml and CI run (docs/config/server.properties).
set -euo pipefail

# Pinned: the newest release on Maven Central, also published as the
# apache/kafka image (every release since 3.7 is, KIP-975) that
# compose.yaml and .github/workflows/ci.yml name.
KAFKA_VERSION=4.4.0
# Kafka's POM brings log4j-api and log4j-core (2.25.5 for 4.4.0) but not
# the SLF4J 1.x binding its release adds: without it the broker prints
# nothing (../shared/reference/KAFKA.md).
LOG4J_VERSION=2.25.5

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kafka-example}/kafka-$KAFKA_VERSION

usage() {
  sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "broker: $*" >&2
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_tools() {
  local missing=()
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  if ((${#missing[@]} > 0)); then
    die "Apache Kafka needs Java 17 or newer and Maven to fetch it; install" \
      "them with \`apt-get install ${missing[*]}\` (Debian) and run this again"
  fi
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
  ((${major:-0} >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17 or newer; \`java\` is $major (apt-get install openjdk-17-jre-headless)"
}

install_kafka() {
  [[ -f $cache/lib/.complete ]] && return 0
  require_tools
  echo "broker: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $cache (once per machine)" >&2
  local started=$SECONDS
  mkdir -p "$cache"
  cat >"$cache/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafka-example</groupId>
  <artifactId>local-kafka</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$cache/lib.partial"
  mvn -B -f "$cache/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$cache/lib.partial" >"$cache/maven.log" 2>&1 ||
    { tail -n 30 "$cache/maven.log" >&2; die "Maven could not fetch Kafka $KAFKA_VERSION; its log is $cache/maven.log (above)"; }
  # One console appender; the request log only at WARN, as Kafka ships it.
  cat >"$cache/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
  touch "$cache/lib.partial/.complete"
  rm -rf "${cache:?}/lib"
  mv "$cache/lib.partial" "$cache/lib"
  echo "broker: Kafka $KAFKA_VERSION installed in $((SECONDS - started)) s ($(du -sh "$cache/lib" | cut -f1))" >&2
}

# java with the broker's classpath and logging; $1 is the node's directory.
kafka_java() {
  local node_dir=$1
  shift
  java -Dlog4j2.configurationFile="$cache/log4j2.properties" \
    -Dkafka.logs.dir="$node_dir" -cp "$cache/lib/*" "$@"
}

# The broker's settings for node $1 of $nodes. Every value that is not
# Kafka's default says why.
server_config() {
  local id=$1 voters='' n
  for ((n = 1; n <= nodes; n++)); do
    voters+="${voters:+,}$n@127.0.0.1:$((controller_port + n - 1))"
  done
  local replicas=$nodes min_isr=$((nodes > 1 ? 2 : 1)) client_protocol=PLAINTEXT
  [[ -n $tls_cert ]] && client_protocol=SSL
  cat <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=CLIENT://127.0.0.1:$((port + id - 1)),CONTROLLER://127.0.0.1:$((controller_port + id - 1))
advertised.listeners=CLIENT://127.0.0.1:$((port + id - 1))
listener.security.protocol.map=CLIENT:$client_protocol,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=CLIENT
log.dirs=$dir/node-$id/data
# The services create their topics with the partitions they need
# (kafka.provision_topics); a typo must not create one.
auto.create.topics.enable=false
# Eight partitions, as the services create their topics; the same as
# docs/config/server.properties (compose.yaml and CI).
num.partitions=8
# Every partition on every broker: one node, or three with two in sync
# for an acks=all write, as production runs (docs/config/topics.md).
default.replication.factor=$replicas
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
# A local broker holds few consumer groups; 50 offsets partitions (the
# default) make a new group's first coordinator lookup slower.
offsets.topic.num.partitions=8
# A dead broker is fenced, and its partitions' leadership moves, after
# this (default 9 s); a test that kills a broker waits it out.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
# KIP-848 groups (group.protocol=consumer) take their session timeout and
# heartbeat interval from the broker (defaults 45 s and 5 s, which are also
# the minimums): the same 10 s and 3 s as the classic members of the tests
# (tests/e2e/src/process.rs, SESSION_TIMEOUT), so that a killed member's
# partitions move within seconds under either protocol (the same in
# docs/config/server.properties).
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=1000
group.consumer.heartbeat.interval.ms=3000
# The log cleaner (for __consumer_offsets) takes 128 MiB of heap by
# default; the heap here is 512 MiB.
log.cleaner.dedupe.buffer.size=16777216
EOF
  if [[ -n $tls_cert ]]; then
    cat <<EOF
ssl.keystore.type=PEM
ssl.keystore.location=$dir/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/truststore.pem
EOF
  fi
}

# Parses the options of start/stop/kill/...; sets nodes, port,
# controller_port, dir, tls_cert, tls_key, tls_ca, now.
nodes='' port='' controller_port='' dir='' tls_cert='' tls_key='' tls_ca='' now=''
parse_options() {
  while (($# > 0)); do
    case $1 in
      --nodes) nodes=${2:?--nodes takes 1 or 3}; shift 2 ;;
      --port) port=${2:?--port takes a port}; shift 2 ;;
      --controller-port) controller_port=${2:?--controller-port takes a port}; shift 2 ;;
      --dir) dir=${2:?--dir takes a directory}; shift 2 ;;
      --tls)
        tls_cert=${2:?--tls takes CERT_PEM KEY_PEM CA_PEM} tls_key=${3:?--tls takes CERT_PEM KEY_PEM CA_PEM}
        tls_ca=${4:?--tls takes CERT_PEM KEY_PEM CA_PEM}
        shift 4
        ;;
      --now) now=1; shift ;;
      *) usage ;;
    esac
  done
  dir=${dir:-$root/.run/broker}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
}

# The layout a directory was formatted with; a later start must match it.
load_layout() {
  if [[ -f $dir/layout ]]; then
    local saved_nodes saved_port saved_controller saved_tls
    read -r saved_nodes saved_port saved_controller saved_tls <"$dir/layout"
    if [[ -n $nodes && $nodes != "$saved_nodes" ]] || [[ -n $port && $port != "$saved_port" ]]; then
      die "$dir holds a cluster of $saved_nodes node(s) on port $saved_port; start it as that, or remove $dir"
    fi
    nodes=$saved_nodes port=$saved_port controller_port=$saved_controller
    [[ $saved_tls == tls && -z $tls_cert ]] && tls_cert=$dir/keystore.pem
  fi
  nodes=${nodes:-1}
  port=${port:-9092}
  controller_port=${controller_port:-$((port + 100))}
  [[ $nodes == 1 || $nodes == 3 ]] || die "--nodes is 1 or 3, not $nodes"
}

# Whether pid $1 is a running Kafka JVM (not a process that got the pid
# after a reboot, nor an exited one awaiting its parent: its cmdline is
# empty).
kafka_alive() { grep -qa kafka.Kafka "/proc/$1/cmdline" 2>/dev/null; }

# The pid of node $1 while it runs.
node_pid() {
  local pid
  pid=$(cat "$dir/node-$1/pid" 2>/dev/null) || return 1
  kafka_alive "$pid" && echo "$pid"
}

start_node() {
  local id=$1 node_dir=$dir/node-$1
  mkdir -p "$node_dir"
  server_config "$id" >"$node_dir/server.properties"
  if [[ ! -f $node_dir/data/meta.properties ]]; then
    kafka_java "$node_dir" -Xmx256m -XX:TieredStopAtLevel=1 kafka.tools.StorageTool format \
      -t "$(cat "$dir/cluster.id")" -c "$node_dir/server.properties" >>"$node_dir/kafka.log" 2>&1 ||
      { tail -n 20 "$node_dir/kafka.log" >&2; die "node $id: formatting $node_dir/data failed"; }
  fi
  # The flags of Kafka's kafka-run-class.sh, with a smaller heap unless
  # KAFKA_HEAP_OPTS says otherwise.
  local heap
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
  nohup java "${heap[@]}" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$cache/log4j2.properties" -Dkafka.logs.dir="$node_dir" \
    -cp "$cache/lib/*" kafka.Kafka "$node_dir/server.properties" \
    >>"$node_dir/kafka.log" 2>&1 </dev/null &
  echo $! >"$node_dir/pid"
}

start() {
  load_layout
  if [[ ! -f $dir/layout ]] && port_open "$port"; then
    echo "broker: something already listens on 127.0.0.1:$port; using it" >&2
    exit 0
  fi
  install_kafka
  if [[ -n $tls_cert && $tls_cert != "$dir/keystore.pem" ]]; then
    # Kafka's PEM keystore: the private key, then the certificate chain.
    cat "$tls_key" "$tls_cert" >"$dir/keystore.pem"
    cp "$tls_ca" "$dir/truststore.pem"
  fi
  if [[ ! -f $dir/cluster.id ]]; then
    kafka_java "$dir" -Xmx128m -XX:TieredStopAtLevel=1 kafka.tools.StorageTool random-uuid >"$dir/cluster.id"
  fi
  echo "$nodes $port $controller_port ${tls_cert:+tls}" >"$dir/layout"

  local id started=()
  for ((id = 1; id <= nodes; id++)); do
    node_pid "$id" >/dev/null || { start_node "$id"; started+=("$id"); }
  done
  # No node opens its client port before a quorum of controllers is up,
  # so all were started before this waits.
  local deadline=$((SECONDS + 120))
  for id in "${started[@]}"; do
    local client=$((port + id - 1))
    until port_open "$client"; do
      if ! node_pid "$id" >/dev/null; then
        tail -n 30 "$dir/node-$id/kafka.log" >&2
        die "node $id exited before it opened 127.0.0.1:$client; its log is $dir/node-$id/kafka.log (above)"
      fi
      if ((SECONDS > deadline)); then
        tail -n 30 "$dir/node-$id/kafka.log" >&2
        die "node $id did not open 127.0.0.1:$client within 120 s; see $dir/node-$id/kafka.log (above)"
      fi
      sleep 0.2
    done
  done
  local ports=$port
  ((nodes == 1)) || ports+="-$((port + nodes - 1))"
  echo "broker: Kafka $KAFKA_VERSION, $nodes node(s), listening on 127.0.0.1:$ports (data in $dir)" >&2
}

stop() {
  [[ -f $dir/layout ]] || return 0
  local id pids=()
  for id in 1 2 3; do
    local pid
    pid=$(node_pid "$id") || continue
    kill -CONT "$pid" 2>/dev/null || true # a paused node cannot shut down
    kill "-$([[ -n $now ]] && echo KILL || echo TERM)" "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  local deadline=$((SECONDS + 30))
  for pid in "${pids[@]}"; do
    while kafka_alive "$pid"; do
      if ((SECONDS > deadline)); then
        echo "broker: pid $pid still running 30 s after SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
      sleep 0.1
    done
  done
  rm -f "$dir"/node-*/pid
  ((${#pids[@]} == 0)) || echo "broker: stopped" >&2
}

signal_node() {
  local signal=$1 id=$2 pid
  pid=$(node_pid "$id") || die "node $id is not running (in $dir)"
  kill "-$signal" "$pid"
  if [[ $signal == KILL ]]; then
    while kafka_alive "$pid"; do sleep 0.05; done
    rm -f "$dir/node-$id/pid"
  fi
}

command=${1:-}
(($# > 0)) && shift
case $command in
  install)
    install_kafka
    ;;
  start)
    parse_options "$@"
    start
    ;;
  stop)
    parse_options "$@"
    stop
    ;;
  kill | pause | resume | pid)
    node=${1:-}
    [[ $node =~ ^[1-3]$ ]] || usage
    shift
    parse_options "$@"
    case $command in
      kill) signal_node KILL "$node" ;;
      pause) signal_node STOP "$node" ;;
      resume) signal_node CONT "$node" ;;
      pid) node_pid "$node" || die "node $node is not running (in $dir)" ;;
    esac
    ;;
  *)
    usage
    ;;
esac
