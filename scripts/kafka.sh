#!/usr/bin/env bash
# scripts/kafka.sh — a real single-node Apache Kafka broker (KRaft) for Herald
# development and tests, without Docker.
#
#   scripts/kafka.sh start      fetch jars (once), format storage (once), start, wait until ready
#   scripts/kafka.sh stop       stop the broker this script started
#   scripts/kafka.sh status     exit 0 and print the bootstrap address if running
#   scripts/kafka.sh logs [-f]  print the last lines of the broker log (-f: follow)
#   scripts/kafka.sh version    print the Kafka version (of the running broker, if any)
#   scripts/kafka.sh topics ARGS  kafka-topics against the broker, e.g.
#                               topics --create --topic t --partitions 3;  topics --list
#
# Environment (all optional):
#   KAFKA_VERSION          Kafka version to run                  (default 4.4.0)
#   KAFKA_PORT             client (PLAINTEXT) port on 127.0.0.1  (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port                 (default KAFKA_PORT+1)
#   KAFKA_STATE_DIR        data, server.properties, pid, log     (default <repo>/target/kafka)
#   HERALD_CACHE           jar cache root                        (default ~/.cache/herald)
#   KAFKA_HEAP_OPTS        JVM heap flags                        (default -Xms256m -Xmx768m)
#   KAFKA_OPTS             extra JVM flags
#   KAFKA_LOG_LEVEL        broker log level                      (default INFO)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness         (default 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM         (default 30)
#   JAVA_HOME / JAVA       Java 17+ to use                       (default: java on PATH)
#
# To start from scratch: scripts/kafka.sh stop && rm -rf target/kafka
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
POM="$SCRIPT_DIR/kafka/pom.xml"
LOG4J_CONFIG="$SCRIPT_DIR/kafka/log4j2.xml"

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
KAFKA_HOST=127.0.0.1
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}
KAFKA_OPTS=${KAFKA_OPTS:-}
KAFKA_LOG_LEVEL=${KAFKA_LOG_LEVEL:-INFO}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}

CACHE_DIR="${HERALD_CACHE:-$HOME/.cache/herald}/kafka-$KAFKA_VERSION"
LIBS_DIR="$CACHE_DIR/libs"
LIBS_MARKER="$CACHE_DIR/libs.complete"

STATE_DIR=${KAFKA_STATE_DIR:-$REPO_ROOT/target/kafka}
DATA_DIR='' PROPS='' PID_FILE='' LOG_FILE='' LOCK_FILE='' # set by init_state_paths

BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
# Line logged by kafka.server.KafkaRaftServer once broker and controller are up.
READY_LINE='Kafka Server started'

die() {
  printf 'kafka.sh: %s\n' "$*" >&2
  exit 1
}

info() {
  printf 'kafka.sh: %s\n' "$*"
}

is_uint() {
  [[ $1 =~ ^[0-9]+$ ]]
}

# Resolve STATE_DIR to an absolute physical path: the properties file path is
# matched verbatim against /proc/PID/cmdline.
init_state_paths() {
  mkdir -p -- "$STATE_DIR"
  STATE_DIR=$(cd -- "$STATE_DIR" && pwd -P)
  DATA_DIR="$STATE_DIR/data"
  PROPS="$STATE_DIR/server.properties"
  PID_FILE="$STATE_DIR/kafka.pid"
  LOG_FILE="$STATE_DIR/kafka.log"
  LOCK_FILE="$STATE_DIR/.lock"
}

# Serialise start/stop against each other (fd 9; closed for the broker itself).
take_lock() {
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK_FILE"
    flock -w 300 9 || die "another kafka.sh is holding $LOCK_FILE"
  fi
}

find_java() {
  if [[ -n ${JAVA:-} ]]; then
    :
  elif [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA="$JAVA_HOME/bin/java"
  else
    JAVA=$(command -v java) || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  fi
  local version major
  version=$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)
  major=${version%%.*}
  if ! is_uint "$major" || ((major < 17)); then
    die "$JAVA is Java '${version:-unknown}'; Kafka $KAFKA_VERSION needs Java 17+"
  fi
}

pom_hash() {
  sha256sum -- "$POM" | cut -d' ' -f1
}

# Fetch kafka_2.13 and its runtime dependencies into the cache, once. The marker
# (holding the pom's hash) is written last, so an interrupted download is redone,
# and editing the pom triggers a refetch.
ensure_libs() {
  local want
  want=$(pom_hash)
  if [[ -f $LIBS_MARKER && $(<"$LIBS_MARKER") == "$want" && -f $LIBS_DIR/kafka_2.13-$KAFKA_VERSION.jar ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found; needed once to fetch the Kafka jars"
  info "fetching Kafka $KAFKA_VERSION jars into $LIBS_DIR (one-time)..."
  mkdir -p -- "$CACHE_DIR"
  local tmp="$CACHE_DIR/libs.tmp.$$" mvn_log="$CACHE_DIR/mvn.log"
  rm -rf -- "$CACHE_DIR"/libs.tmp.* "$LIBS_MARKER" # leftovers of an interrupted fetch
  # shellcheck disable=SC2064 # expand $tmp now
  trap "rm -rf -- '$tmp'" EXIT
  # Output goes to a file: Debian's mvn 3.8 prints stray ANSI codes even with -q -B.
  if ! mvn -q -B -f "$POM" \
    -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies \
    -DincludeScope=runtime \
    -DoutputDirectory="$tmp" >"$mvn_log" 2>&1 9>&-; then
    cat -- "$mvn_log" >&2
    rm -rf -- "$tmp"
    die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (log: $mvn_log)"
  fi
  [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
  rm -rf -- "$LIBS_DIR"
  mv -- "$tmp" "$LIBS_DIR"
  trap - EXIT
  printf '%s\n' "$want" >"$LIBS_MARKER"
}

write_properties() {
  mkdir -p -- "$DATA_DIR"
  cat >"$PROPS.tmp" <<EOF
# Generated by scripts/kafka.sh on every start; edits are overwritten.
# Single-node KRaft dev broker for Herald.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR

num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
# After an unclean exit (SIGKILL, crash) the restarted broker cannot register
# until its old session expires (default 9 s); keep that short for a dev node.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
EOF
  mv -- "$PROPS.tmp" "$PROPS"
}

java_opts() {
  # shellcheck disable=SC2206 # word splitting of the *_OPTS variables is intended
  JAVA_ARGS=(
    $KAFKA_HEAP_OPTS
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$LOG4J_CONFIG"
    "-Dherald.kafka.log.level=$KAFKA_LOG_LEVEL"
    "-Dkafka.logs.dir=$STATE_DIR"
    $KAFKA_OPTS
    -cp "$LIBS_DIR/*"
  )
}

ensure_formatted() {
  [[ -f $DATA_DIR/meta.properties ]] && return 0
  local cluster_id format_log="$STATE_DIR/format.log"
  # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-'.
  while :; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $cluster_id != -* ]] && break
  done
  info "formatting storage in $DATA_DIR (cluster id $cluster_id)..."
  if ! "$JAVA" "${JAVA_ARGS[@]}" kafka.tools.StorageTool format --standalone \
    -t "$cluster_id" -c "$PROPS" >"$format_log" 2>&1 9>&-; then
    cat -- "$format_log" >&2
    die "formatting storage failed"
  fi
  printf '%s\n' "$KAFKA_VERSION" >"$STATE_DIR/formatted-by-version"
}

# Extra hint for a failed start when the data dir comes from another Kafka version.
version_hint() {
  local formatted
  formatted=$(cat -- "$STATE_DIR/formatted-by-version" 2>/dev/null) || return 0
  if [[ $formatted != "$KAFKA_VERSION" ]]; then
    printf '; note: %s was formatted by Kafka %s (downgrades are not supported; to start fresh: rm -rf %s)' \
      "$DATA_DIR" "$formatted" "$STATE_DIR"
  fi
}

# Is PID our broker: a kafka.Kafka JVM started with our properties file?
is_our_broker() {
  local pid=$1 args
  is_uint "$pid" || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  args=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  grep -qxF 'kafka.Kafka' <<<"$args" && grep -qxF "$PROPS" <<<"$args"
}

# Print the pid of our running broker, or return 1. The pid file is the source
# of truth; if it is lost, fall back to looking for our exact command line.
broker_pid() {
  local pid cmdline
  if [[ -f $PID_FILE ]]; then
    pid=$(<"$PID_FILE")
    if is_our_broker "$pid"; then
      printf '%s\n' "$pid"
      return 0
    fi
  fi
  for cmdline in /proc/[0-9]*/cmdline; do
    pid=${cmdline#/proc/}
    pid=${pid%/cmdline}
    if is_our_broker "$pid"; then
      printf '%s\n' "$pid" >"$PID_FILE"
      printf '%s\n' "$pid"
      return 0
    fi
  done
  return 1
}

port_open() {
  (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null
}

log_tail() {
  if [[ -f $LOG_FILE ]]; then
    printf -- '--- last lines of %s ---\n' "$LOG_FILE" >&2
    tail -n "${1:-40}" -- "$LOG_FILE" >&2
  fi
}

# Bootstrap address of the running broker, from the properties it was started with
# (may differ from $BOOTSTRAP if it was started with another KAFKA_PORT).
running_bootstrap() {
  local addr
  addr=$(sed -n 's|^advertised\.listeners=PLAINTEXT://||p' -- "$PROPS" 2>/dev/null) || true
  printf '%s\n' "${addr:-$BOOTSTRAP}"
}

running_version() {
  local v
  v=$(grep -m 1 -o 'Kafka version: [^ ]*' -- "$LOG_FILE" 2>/dev/null | cut -d' ' -f3) || true
  printf '%s\n' "${v:-$KAFKA_VERSION}"
}

cmd_start() {
  local pid
  take_lock
  if pid=$(broker_pid); then
    local running
    running=$(running_bootstrap)
    info "already running (pid $pid), Kafka $(running_version), bootstrap $running"
    [[ $running == "$BOOTSTRAP" ]] || die "it listens on $running, not $BOOTSTRAP; stop it first"
    return 0
  fi
  rm -f -- "$PID_FILE"
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$port"; then
      die "port $KAFKA_HOST:$port is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    fi
  done

  find_java
  ensure_libs
  java_opts
  write_properties
  ensure_formatted

  [[ -f $LOG_FILE ]] && mv -f -- "$LOG_FILE" "$LOG_FILE.1"
  info "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller port $KAFKA_CONTROLLER_PORT, log $LOG_FILE)..."
  local start=$SECONDS
  # setsid: own session, so Ctrl-C in the calling terminal doesn't reach it;
  # setsid and nohup both exec, so $! is the JVM's pid.
  setsid nohup "$JAVA" "${JAVA_ARGS[@]}" kafka.Kafka "$PROPS" \
    </dev/null >"$LOG_FILE" 2>&1 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$PID_FILE"

  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f -- "$PID_FILE"
      log_tail 60
      die "Kafka exited during startup (see $LOG_FILE)$(version_hint)"
    fi
    if grep -qF "$READY_LINE" -- "$LOG_FILE" 2>/dev/null && port_open "$KAFKA_PORT"; then
      break
    fi
    if ((SECONDS - start >= KAFKA_START_TIMEOUT)); then
      log_tail 60
      die "Kafka did not become ready within ${KAFKA_START_TIMEOUT}s (pid $pid still running; 'scripts/kafka.sh stop' to kill it)"
    fi
    sleep 0.2
  done
  info "Kafka $(running_version) ready in $((SECONDS - start))s (pid $pid)"
  printf 'bootstrap: %s\n' "$BOOTSTRAP"
}

cmd_stop() {
  local pid
  take_lock
  if ! pid=$(broker_pid); then
    rm -f -- "$PID_FILE"
    info "not running"
    return 0
  fi
  info "stopping Kafka (pid $pid)..."
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  local killed=''
  while is_our_broker "$pid"; do
    if [[ -z $killed ]] && ((SECONDS >= deadline)); then
      info "still running after ${KAFKA_STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      killed=1
      deadline=$((SECONDS + 10))
    elif [[ -n $killed ]] && ((SECONDS >= deadline)); then
      die "pid $pid survived SIGKILL"
    fi
    sleep 0.2
  done
  rm -f -- "$PID_FILE"
  info "stopped"
}

cmd_status() {
  local pid addr
  if pid=$(broker_pid); then
    addr=$(running_bootstrap)
    if port_open "${addr##*:}"; then
      printf 'running (pid %s, Kafka %s): %s\n' "$pid" "$(running_version)" "$addr"
      return 0
    fi
    printf 'starting or unhealthy (pid %s, %s not accepting connections)\n' "$pid" "$addr"
    return 1
  fi
  printf 'not running\n'
  return 3
}

cmd_logs() {
  [[ -f $LOG_FILE ]] || die "no log file at $LOG_FILE"
  if [[ ${1:-} == -f ]]; then
    exec tail -n 100 -F -- "$LOG_FILE"
  fi
  tail -n "${KAFKA_LOG_LINES:-100}" -- "$LOG_FILE"
}

# kafka-topics (org.apache.kafka.tools.TopicCommand) with --bootstrap-server filled in.
cmd_topics() {
  take_lock
  find_java
  ensure_libs
  exec 9>&- # release the lock; the tool may run for a while
  exec "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 \
    "-Dlog4j2.configurationFile=$LOG4J_CONFIG" \
    -Dherald.kafka.log.level=WARN -Dherald.kafka.log.target=SYSTEM_ERR \
    -cp "$LIBS_DIR/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$BOOTSTRAP" "$@"
}

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

main() {
  is_uint "$KAFKA_PORT" || die "KAFKA_PORT must be a number"
  is_uint "$KAFKA_CONTROLLER_PORT" || die "KAFKA_CONTROLLER_PORT must be a number"
  [[ $KAFKA_PORT != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
  local cmd=${1:-}
  case $cmd in
  version)
    init_state_paths
    running_version
    ;;
  start | stop | status | logs | topics)
    shift
    init_state_paths
    "cmd_$cmd" "$@"
    ;;
  -h | --help | help)
    usage
    ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
}

main "$@"
