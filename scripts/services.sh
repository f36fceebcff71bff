#!/usr/bin/env bash
# Real services for development, tests and CI, without Docker:
#   - Apache Kafka (KRaft, one combined broker+controller) run from Maven Central jars
#     listed in scripts/kafka/pom.xml;
#   - Redis from Debian's redis-server package, without persistence.
#
# Usage: scripts/services.sh up | down [--purge] | status | logs [-f] | install | browser
#
#   up       fetch/install what is missing, start both, wait until they really answer,
#            then print the env to export on stdout (progress goes to stderr), so
#            `eval "$(scripts/services.sh up)"` works. Idempotent.
#   down     stop both (Kafka: SIGTERM, SIGKILL after KAFKA_STOP_TIMEOUT s); idempotent.
#            --purge also deletes Kafka's data (topics, offsets, cluster id).
#   status   real checks (a Kafka metadata request, redis PING); exit 0 only if both are up.
#   logs     last lines of kafka.log and redis.log (-f: follow them).
#   install  fetch/install what `up` needs (Kafka jars, Java, redis-server) when missing,
#            starting nothing: tests that start a broker or a Redis of their own need it
#            even where the shared services run elsewhere.
#   browser  install Debian's chromium when missing (the dashboard's headless browser
#            test needs it) and print `export RECSYS_CHROMIUM=...`.
#
# Environment (defaults in brackets):
#   RECSYS_CACHE_DIR [~/.cache/recsys-online]  jars in $RECSYS_CACHE_DIR/kafka-<version>/libs
#   RECSYS_STATE_DIR [$RECSYS_CACHE_DIR/run; run-KAFKA-CONTROLLER-REDIS ports for others]
#                                               data, configs, logs, pid files
#   RECSYS_MAVEN_REPO [Maven's default ~/.m2/repository]  local Maven repository
#   KAFKA_PORT [9092]  KAFKA_CONTROLLER_PORT [9093]  REDIS_PORT [6379]
#   KAFKA_VERSION [the kafka.version of scripts/kafka/pom.xml]
#   KAFKA_NUM_PARTITIONS [8]  KAFKA_HEAP_OPTS [-Xms512m -Xmx512m]
#   KAFKA_START_TIMEOUT [90]  KAFKA_STOP_TIMEOUT [30]  (seconds)
#   KAFKA_SASL_SSL_PORT [unset]  also listen for SASL over TLS there (as managed Kafka
#                       services do): a self-signed certificate made once in the state dir,
#                       mechanisms PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; up prints
#                       KAFKA_SASL_SSL_BOOTSTRAP and KAFKA_SSL_CAFILE too
#   KAFKA_SASL_USERS [recsys:recsys-secret]  name:password,... the SASL listener accepts
#   KAFKA_SSL_PORT [unset]  also listen for mutual TLS there (a client certificate
#                       required): up makes one with openssl and prints KAFKA_SSL_BOOTSTRAP,
#                       KAFKA_SSL_CAFILE, KAFKA_SSL_CLIENT_CERT and KAFKA_SSL_CLIENT_KEY
#   KAFKA_CHECK [auto]  how to ask Kafka for metadata: python (aiokafka admin client),
#                       java (org.apache.kafka.tools.TopicCommand) or auto (python when
#                       $PYTHON can import aiokafka, else java)
#   PYTHON [python3]
# See docs/services.md.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/kafka/pom.xml"

CACHE_DIR=${RECSYS_CACHE_DIR:-${HOME:-/root}/.cache/recsys-online}
MAVEN_REPO=${RECSYS_MAVEN_REPO:-}
HOST=127.0.0.1
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
REDIS_PORT=${REDIS_PORT:-6379}
# Each set of ports has its own state (pid files, data, logs): with one folder, a second
# pair started on other ports took the first's broker for its own, and its `down` stopped
# it, and replaced the first Redis's pid file.
if [[ $KAFKA_PORT == 9092 && $KAFKA_CONTROLLER_PORT == 9093 && $REDIS_PORT == 6379 ]]; then
  STATE_DIR=${RECSYS_STATE_DIR:-$CACHE_DIR/run}
else
  STATE_DIR=${RECSYS_STATE_DIR:-$CACHE_DIR/run-$KAFKA_PORT-$KAFKA_CONTROLLER_PORT-$REDIS_PORT}
fi
KAFKA_NUM_PARTITIONS=${KAFKA_NUM_PARTITIONS:-8}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
KAFKA_CHECK=${KAFKA_CHECK:-auto}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-}
KAFKA_SASL_USERS=${KAFKA_SASL_USERS:-recsys:recsys-secret}
KAFKA_SSL_PORT=${KAFKA_SSL_PORT:-}
PYTHON=${PYTHON:-python3}

POM_KAFKA_VERSION=$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$POM" | head -n 1)
KAFKA_VERSION=${KAFKA_VERSION:-$POM_KAFKA_VERSION}
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"

KAFKA_DATA="$STATE_DIR/kafka-data"
KAFKA_PROPS="$STATE_DIR/server.properties"
KAFKA_LOG4J="$STATE_DIR/kafka-log4j2.properties"
TOOLS_LOG4J="$STATE_DIR/tools-log4j2.properties"
TOOLS_ADMIN_PROPS="$STATE_DIR/tools-admin.properties"
KAFKA_LOG="$STATE_DIR/kafka.log"
KAFKA_PID="$STATE_DIR/kafka.pid"
KAFKA_FORMATTED_BY="$STATE_DIR/kafka-data.version"
REDIS_DIR="$STATE_DIR/redis"
REDIS_LOG="$STATE_DIR/redis.log"
REDIS_PID="$STATE_DIR/redis.pid"

KAFKA_BOOTSTRAP="$HOST:$KAFKA_PORT"
TLS_DIR="$STATE_DIR/tls"
TLS_KEYSTORE="$TLS_DIR/broker.p12"
TLS_CAFILE="$TLS_DIR/ca.pem"
TLS_PASSWORD=recsys-local-tls # (a self-signed loopback certificate: not a secret)
TLS_TRUSTSTORE="$TLS_DIR/clients.p12"
TLS_CLIENT_CERT="$TLS_DIR/client.pem"
TLS_CLIENT_KEY="$TLS_DIR/client.key"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

now_us() { echo "${EPOCHREALTIME/./}"; }
seconds_since() { # $1 = start from now_us; prints seconds with one decimal
  local us=$(($(now_us) - $1))
  printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

port_open() { # $1 = port; true when something accepts TCP connections on 127.0.0.1:$1
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# ---------------------------------------------------------------- installation

apt_install() {
  local -a sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo to apt-get install $*"
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  log "installing $* with apt-get (first run only)…"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
    || die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >&2 \
    || die "apt-get install $* failed"
}

java_major() {
  java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n 1
}

ensure_java() {
  local missing=()
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
  local major
  major=$(java_major)
  [[ -n $major && $major -ge 17 ]] \
    || die "Kafka $KAFKA_VERSION needs Java 17+, found: $(java -version 2>&1 | head -n 1)"
}

pom_stamp() { # identifies the jar list: Kafka version + checksum of the pom
  printf '%s %s\n' "$KAFKA_VERSION" "$(sha256sum "$POM" | cut -d' ' -f1)"
}

ensure_kafka_jars() {
  local stamp="$KAFKA_HOME/.complete"
  if [[ -f $stamp && $(cat "$stamp") == "$(pom_stamp)" ]]; then
    return 0
  fi
  ensure_java
  # One fetch at a time into the shared cache (two runs with their own state folders,
  # or `install` beside `up`: one moved its jars into the other's, or deleted them
  # under a starting broker); the second finds the first's jars once it has the lock.
  mkdir -p "$CACHE_DIR"
  exec 8>"$CACHE_DIR/.kafka-$KAFKA_VERSION.lock"
  flock -w 900 8 || die "another scripts/services.sh is fetching Kafka's jars into $CACHE_DIR"
  if [[ -f $stamp && $(cat "$stamp") == "$(pom_stamp)" ]]; then
    exec 8>&-
    return 0
  fi
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)…"
  local t0 tmp
  t0=$(now_us)
  tmp=$(mktemp -d "$CACHE_DIR/.kafka-$KAFKA_VERSION.XXXXXX")
  # -C: a jar whose checksum does not match Maven Central's fails the fetch
  local -a mvn_args=(-B -q -C -f "$POM" -Dstyle.color=never "-Dkafka.version=$KAFKA_VERSION")
  [[ -n $MAVEN_REPO ]] && mvn_args+=("-Dmaven.repo.local=$MAVEN_REPO")
  if ! mvn "${mvn_args[@]}" dependency:copy-dependencies -DincludeScope=runtime \
    "-DoutputDirectory=$tmp/libs" >"$tmp/mvn.log" 2>&1; then
    tail -n 40 "$tmp/mvn.log" >&2
    rm -rf "$tmp"
    die "could not fetch Kafka $KAFKA_VERSION jars with Maven (output above)"
  fi
  [[ -f $tmp/libs/kafka_2.13-$KAFKA_VERSION.jar ]] \
    || { rm -rf "$tmp"; die "Maven ran but kafka_2.13-$KAFKA_VERSION.jar is missing"; }
  pom_stamp >"$tmp/.complete"
  rm -rf "$KAFKA_HOME"
  mv "$tmp" "$KAFKA_HOME"
  exec 8>&-
  log "Kafka jars ready in $KAFKA_LIBS ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars, $(du -sh "$KAFKA_LIBS" | cut -f1), $(seconds_since "$t0") s)"
}

ensure_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
  fi
}

# ---------------------------------------------------------------- Kafka

sasl_users_each() { # prints name<TAB>password per KAFKA_SASL_USERS entry
  local entry entries
  IFS=',' read -ra entries <<<"$KAFKA_SASL_USERS"
  for entry in "${entries[@]}"; do
    [[ $entry == *:* ]] || die "KAFKA_SASL_USERS: '$entry' is not name:password"
    printf '%s\t%s\n' "${entry%%:*}" "${entry#*:}"
  done
}

tls_on() { [[ -n $KAFKA_SASL_SSL_PORT || -n $KAFKA_SSL_PORT ]]; }

tls_listeners() { # ",SASL_SSL://..." and ",SSL://..." for the listeners asked for
  [[ -z $KAFKA_SASL_SSL_PORT ]] || printf ',SASL_SSL://%s:%s' "$HOST" "$KAFKA_SASL_SSL_PORT"
  [[ -z $KAFKA_SSL_PORT ]] || printf ',SSL://%s:%s' "$HOST" "$KAFKA_SSL_PORT"
}

tls_config() { # the TLS listeners' lines of server.properties (none when off)
  tls_on || return 0
  printf '%s\n' \
    "# TLS listeners (KAFKA_SASL_SSL_PORT, KAFKA_SSL_PORT): the broker's certificate" \
    "ssl.keystore.type=PKCS12" \
    "ssl.keystore.location=$TLS_KEYSTORE" \
    "ssl.keystore.password=$TLS_PASSWORD" \
    "ssl.key.password=$TLS_PASSWORD"
  if [[ -n $KAFKA_SSL_PORT ]]; then
    printf '%s\n' \
      "# mutual TLS on the SSL listener: clients show a certificate the truststore holds" \
      "listener.name.ssl.ssl.client.auth=required" \
      "ssl.truststore.type=PKCS12" \
      "ssl.truststore.location=$TLS_TRUSTSTORE" \
      "ssl.truststore.password=$TLS_PASSWORD"
  fi
  sasl_ssl_config
}

sasl_ssl_config() { # the SASL_SSL listener's SASL lines (none when off)
  [[ -n $KAFKA_SASL_SSL_PORT ]] || return 0
  local plain="org.apache.kafka.common.security.plain.PlainLoginModule required" name password
  while IFS=$'\t' read -r name password; do
    plain+=" user_$name=\"$password\""
  done < <(sasl_users_each)
  local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  printf '%s\n' \
    "# SASL over TLS (KAFKA_SASL_SSL_PORT): PLAIN users here, SCRAM users added at format" \
    "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512" \
    "listener.name.sasl_ssl.plain.sasl.jaas.config=$plain;" \
    "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram" \
    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram"
}

ensure_tls() { # self-signed certificates (broker, and a client's), made once per state dir
  tls_on || return 0
  [[ -f $TLS_KEYSTORE && -f $TLS_CAFILE && -f $TLS_TRUSTSTORE ]] && return 0
  mkdir -p "$TLS_DIR"
  rm -f "$TLS_KEYSTORE" "$TLS_CAFILE" "$TLS_TRUSTSTORE" "$TLS_CLIENT_CERT" "$TLS_CLIENT_KEY"
  keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 \
    -dname "CN=localhost" -ext "SAN=ip:$HOST,dns:localhost" \
    -keystore "$TLS_KEYSTORE" -storetype PKCS12 \
    -storepass "$TLS_PASSWORD" -keypass "$TLS_PASSWORD" >/dev/null 2>&1 \
    || die "keytool could not make the broker's TLS certificate"
  keytool -exportcert -rfc -alias broker -keystore "$TLS_KEYSTORE" \
    -storepass "$TLS_PASSWORD" -file "$TLS_CAFILE" >/dev/null 2>&1 \
    || die "keytool could not export the broker's TLS certificate"
  command -v openssl >/dev/null || apt_install openssl
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=recsys-client" \
    -keyout "$TLS_CLIENT_KEY" -out "$TLS_CLIENT_CERT" >/dev/null 2>&1 \
    || die "openssl could not make a client certificate"
  keytool -importcert -noprompt -alias client -file "$TLS_CLIENT_CERT" \
    -keystore "$TLS_TRUSTSTORE" -storetype PKCS12 -storepass "$TLS_PASSWORD" >/dev/null 2>&1 \
    || die "keytool could not make the broker's truststore"
  log "made self-signed TLS certificates for $HOST ($TLS_CAFILE) and a client ($TLS_CLIENT_CERT)"
}

write_kafka_config() {
  mkdir -p "$STATE_DIR" "$KAFKA_DATA"
  ensure_tls
  cat >"$KAFKA_PROPS" <<EOF
# Written by scripts/services.sh on every 'up': edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT$(tls_listeners)
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT$(tls_listeners)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
log.dirs=$KAFKA_DATA
$(tls_config)

# topics
num.partitions=$KAFKA_NUM_PARTITIONS
auto.create.topics.enable=true
delete.topic.enable=true
default.replication.factor=1
min.insync.replicas=1

# internal topics of a one-broker cluster
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0

# dev-box retention: a day or 128 MiB per partition, small segments so it applies
log.retention.hours=24
log.retention.bytes=134217728
log.segment.bytes=16777216
log.retention.check.interval.ms=60000
log.cleaner.dedupe.buffer.size=33554432

# 2 cores
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF

  cat >"$KAFKA_LOG4J" <<'EOF'
# log4j2 for the broker (stdout is redirected to kafka.log).
status = warn
# Kafka logs its own shutdown from a JVM shutdown hook: keep log4j alive for it.
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF

  cat >"$TOOLS_LOG4J" <<'EOF'
# log4j2 for Kafka CLI classes run by scripts/services.sh: warnings only, on stderr.
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF

  cat >"$TOOLS_ADMIN_PROPS" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=8000
EOF
}

# JVM options for short-lived Kafka CLI classes: small heap, fast start, quiet logging.
TOOL_JVM_OPTS=(-Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
  "-Dlog4j2.configurationFile=$TOOLS_LOG4J")

kafka_java() { # run a Kafka class from the cached jars
  java "${TOOL_JVM_OPTS[@]}" -cp "$KAFKA_LIBS/*" "$@"
}

CHECK_METHOD=""
resolve_check_method() {
  [[ -n $CHECK_METHOD ]] && return 0
  case $KAFKA_CHECK in
    python | java) CHECK_METHOD=$KAFKA_CHECK ;;
    auto)
      if "$PYTHON" -c 'import aiokafka' >/dev/null 2>&1; then
        CHECK_METHOD=python
      else
        CHECK_METHOD=java
      fi
      ;;
    *) die "KAFKA_CHECK must be auto, python or java (got '$KAFKA_CHECK')" ;;
  esac
}

# One real metadata request; error text (if any) goes to $STATE_DIR/kafka-check.err.
kafka_check_once() {
  local err="$STATE_DIR/kafka-check.err"
  mkdir -p "$STATE_DIR"
  if ! port_open "$KAFKA_PORT"; then
    echo "nothing listens on $KAFKA_BOOTSTRAP" >"$err"
    return 1
  fi
  resolve_check_method
  if [[ $CHECK_METHOD == python ]]; then
    timeout 20 "$PYTHON" - "$KAFKA_BOOTSTRAP" >/dev/null 2>"$err" <<'EOF'
import asyncio
import logging
import sys

from aiokafka.admin import AIOKafkaAdminClient

logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


async def main(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        await admin.list_topics()
    finally:
        await admin.close()


try:
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 15))
except Exception as exc:  # reported by services.sh
    print(f"aiokafka list_topics failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
EOF
  else
    if [[ ! -f $KAFKA_HOME/.complete ]]; then
      echo "no Kafka jars in $KAFKA_LIBS for the java check (run: $0 up)" >"$err"
      return 1
    fi
    [[ -f $TOOLS_LOG4J && -f $TOOLS_ADMIN_PROPS ]] || write_kafka_config
    timeout 30 java "${TOOL_JVM_OPTS[@]}" -cp "$KAFKA_LIBS/*" \
      org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
      --command-config "$TOOLS_ADMIN_PROPS" --list >/dev/null 2>"$err"
  fi
}

kafka_managed_pid() { # prints the pid of the broker this script started, if alive
  [[ -f $KAFKA_PID ]] || return 1
  local pid
  pid=$(cat "$KAFKA_PID")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $KAFKA_PROPS" || return 1
  echo "$pid"
}

kafka_files_report() { # the broker's open files against its limit: one per partition segment
  local pid=$1 open limit
  open=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  limit=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits" 2>/dev/null)
  [[ $limit =~ ^[0-9]+$ ]] || return 0
  echo "       $open of $limit open files, $(find "$KAFKA_DATA" -mindepth 1 -maxdepth 1 -type d -name '*-[0-9]*' ! -name '*-delete' 2>/dev/null | wc -l) partitions"
  if ((open * 5 > limit * 4)); then
    echo "       WARNING: the broker is near its open-file limit and will refuse new topics;" \
      "delete old topics or start afresh with: $0 down --purge && $0 up"
  fi
}

kafka_log_tail() {
  if [[ -f $KAFKA_LOG ]]; then
    log "last 40 lines of $KAFKA_LOG:"
    tail -n 40 "$KAFKA_LOG" >&2
  fi
}

kafka_wait_ready() { # $1 = pid to watch
  local pid=$1 deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      kafka_log_tail
      die "Kafka (pid $pid) exited during startup; see $KAFKA_LOG"
    fi
    if kafka_check_once; then
      return 0
    fi
    sleep 0.2
  done
  log "no successful metadata request to $KAFKA_BOOTSTRAP after ${KAFKA_START_TIMEOUT}s; last error:"
  cat "$STATE_DIR/kafka-check.err" >&2 || true
  kafka_log_tail
  die "Kafka did not become ready (pid $pid still running; stop it with: $0 down)"
}

kafka_format_storage() {
  if [[ -f $KAFKA_DATA/meta.properties ]]; then
    local by=""
    [[ -f $KAFKA_FORMATTED_BY ]] && by=$(cat "$KAFKA_FORMATTED_BY")
    if [[ $by == "$KAFKA_VERSION" ]]; then
      return 0
    fi
    log "Kafka data in $KAFKA_DATA was formatted by Kafka '${by:-unknown}', not $KAFKA_VERSION: wiping it"
    rm -rf "$KAFKA_DATA"
    mkdir -p "$KAFKA_DATA"
  fi
  log "formatting KRaft storage in $KAFKA_DATA…"
  local cluster_id
  cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid) \
    || die "kafka.tools.StorageTool random-uuid failed"
  local scram=() name password
  if [[ -n $KAFKA_SASL_SSL_PORT ]]; then
    while IFS=$'\t' read -r name password; do
      scram+=(--add-scram "SCRAM-SHA-256=[name=$name,password=$password]"
        --add-scram "SCRAM-SHA-512=[name=$name,password=$password]")
    done < <(sasl_users_each)
  fi
  if ! kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_PROPS" \
    --ignore-formatted "${scram[@]}" >"$STATE_DIR/kafka-format.log" 2>&1; then
    cat "$STATE_DIR/kafka-format.log" >&2
    die "kafka.tools.StorageTool format failed"
  fi
  echo "$KAFKA_VERSION" >"$KAFKA_FORMATTED_BY"
}

kafka_up() {
  local pid
  ensure_kafka_jars
  ensure_java
  if pid=$(kafka_managed_pid); then
    if kafka_check_once; then
      log "Kafka already running (pid $pid) on $KAFKA_BOOTSTRAP"
      return 0
    fi
    log "Kafka process $pid is running but not answering yet: waiting…"
    kafka_wait_ready "$pid"
    log "Kafka ready (pid $pid) on $KAFKA_BOOTSTRAP"
    return 0
  fi
  if port_open "$KAFKA_PORT"; then
    if kafka_check_once; then
      log "a Kafka broker not started by this script already answers on $KAFKA_BOOTSTRAP: using it"
      return 0
    fi
    die "port $KAFKA_PORT is taken by something that does not answer Kafka metadata requests: $(cat "$STATE_DIR/kafka-check.err")"
  fi
  if port_open "$KAFKA_CONTROLLER_PORT"; then
    die "controller port $KAFKA_CONTROLLER_PORT is already in use (set KAFKA_CONTROLLER_PORT)"
  fi

  write_kafka_config
  kafka_format_storage

  local -a heap_opts
  read -r -a heap_opts <<<"$KAFKA_HEAP_OPTS"
  [[ -f $KAFKA_LOG ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.prev"
  log "starting Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP (controller $HOST:$KAFKA_CONTROLLER_PORT), log: $KAFKA_LOG"
  # A plain simple command, so that $! is the JVM itself (not a subshell); fd 9 is
  # the lock of this script and must not stay open in the long-lived broker.
  nohup java "${heap_opts[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$KAFKA_LOG4J" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" \
    </dev/null >"$KAFKA_LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$KAFKA_PID"
  kafka_wait_ready "$pid"
  log "Kafka ready (pid $pid) on $KAFKA_BOOTSTRAP"
}

kafka_down() {
  local pid
  if ! pid=$(kafka_managed_pid); then
    rm -f "$KAFKA_PID"
    if port_open "$KAFKA_PORT"; then
      log "Kafka: something listens on $KAFKA_BOOTSTRAP but was not started by this script; left alone"
    else
      log "Kafka: not running"
    fi
    return 0
  fi
  log "stopping Kafka (pid $pid)…"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  while running "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if running "$pid"; then
    log "Kafka did not stop within ${KAFKA_STOP_TIMEOUT}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while running "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  rm -f "$KAFKA_PID"
  log "Kafka stopped"
}

# ---------------------------------------------------------------- Redis

redis_ping() {
  command -v redis-cli >/dev/null || return 1
  [[ $(timeout 5 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

redis_managed_pid() {
  [[ -f $REDIS_PID ]] || return 1
  local pid
  pid=$(cat "$REDIS_PID")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # (redis-server titles itself "redis-server HOST:PORT": a stale pid file never names
  # another Redis, which down would otherwise shut down)
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "redis-server $HOST:$REDIS_PORT" || return 1
  echo "$pid"
}

redis_version() {
  redis-server --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p'
}

redis_up() {
  local pid
  ensure_redis
  if redis_ping; then
    if pid=$(redis_managed_pid); then
      log "Redis already running (pid $pid) on $HOST:$REDIS_PORT"
    else
      log "a Redis not started by this script already answers on $HOST:$REDIS_PORT: using it"
    fi
    return 0
  fi
  if port_open "$REDIS_PORT"; then
    die "port $REDIS_PORT is taken by something that does not answer redis PING (set REDIS_PORT)"
  fi
  mkdir -p "$REDIS_DIR"
  rm -f "$REDIS_PID"
  log "starting Redis $(redis_version) on $HOST:$REDIS_PORT, log: $REDIS_LOG"
  redis-server --bind "$HOST" --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize yes --dir "$REDIS_DIR" --logfile "$REDIS_LOG" --pidfile "$REDIS_PID" 9>&- \
    || die "redis-server failed to start; see $REDIS_LOG"
  local deadline=$((SECONDS + 20))
  until redis_ping; do
    if ((SECONDS >= deadline)); then
      [[ -f $REDIS_LOG ]] && tail -n 40 "$REDIS_LOG" >&2
      die "Redis did not answer PING on $HOST:$REDIS_PORT within 20s"
    fi
    sleep 0.2
  done
  log "Redis ready (pid $(cat "$REDIS_PID" 2>/dev/null || echo '?')) on $HOST:$REDIS_PORT"
}

redis_down() {
  local pid
  if ! pid=$(redis_managed_pid); then
    rm -f "$REDIS_PID"
    if redis_ping; then
      log "Redis: one answers on $HOST:$REDIS_PORT but was not started by this script; left alone" \
        "(stop it with: redis-cli -p $REDIS_PORT shutdown nosave)"
    else
      log "Redis: not running"
    fi
    return 0
  fi
  log "stopping Redis (pid $pid)…"
  timeout 10 redis-cli -h "$HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 10))
  while running "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if running "$pid"; then
    log "Redis ignored SHUTDOWN: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$REDIS_PID"
  log "Redis stopped"
}

# ---------------------------------------------------------------- commands

take_lock() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -w 300 9 || die "another scripts/services.sh holds $STATE_DIR/.lock"
}

print_env() {
  # shell-quoted (%q): a path with spaces survives `eval`
  printf 'export KAFKA_BOOTSTRAP_SERVERS=%q\n' "$KAFKA_BOOTSTRAP"
  printf 'export REDIS_URL=%q\n' "redis://$HOST:$REDIS_PORT/0"
  printf 'export RECSYS_KAFKA_LIBS=%q\n' "$KAFKA_LIBS"
  # (for the benchmarks that find the broker's pid; not RECSYS_STATE_DIR, which a later
  # run on other ports from the same shell would read back and share)
  printf 'export RECSYS_SERVICES_STATE=%q\n' "$STATE_DIR"
  [[ -z $KAFKA_SASL_SSL_PORT ]] || printf 'export KAFKA_SASL_SSL_BOOTSTRAP=%q\n' "$HOST:$KAFKA_SASL_SSL_PORT"
  if [[ -n $KAFKA_SSL_PORT ]]; then
    printf 'export KAFKA_SSL_BOOTSTRAP=%q\n' "$HOST:$KAFKA_SSL_PORT"
    printf 'export KAFKA_SSL_CLIENT_CERT=%q\n' "$TLS_CLIENT_CERT"
    printf 'export KAFKA_SSL_CLIENT_KEY=%q\n' "$TLS_CLIENT_KEY"
  fi
  if tls_on; then printf 'export KAFKA_SSL_CAFILE=%q\n' "$TLS_CAFILE"; fi
}

cmd_up() {
  local t0
  # (checked here: sasl_users_each runs in subshells, where its die stopped only them,
  # and the broker started without the users misspelt)
  sasl_users_each >/dev/null
  t0=$(now_us)
  take_lock
  kafka_up
  redis_up
  log "up in $(seconds_since "$t0") s: Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP, Redis $(redis_version) on $HOST:$REDIS_PORT; export:"
  print_env
}

# A process that exists and has not exited (a zombie, left unreaped by a PID 1 that
# reaps nothing, as in some containers, has exited).
running() {
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
  [[ $state != Z ]]
}

cmd_down() {
  # down [--purge] [kafka] [redis]: both when neither is named.
  local purge=0 kafka=0 redis=0 arg
  for arg in "$@"; do
    case $arg in
      --purge) purge=1 ;;
      kafka) kafka=1 ;;
      redis) redis=1 ;;
      *) die "unknown argument for down: $arg (--purge, kafka, redis)" ;;
    esac
  done
  if ((!kafka && !redis)); then kafka=1 redis=1; fi
  take_lock
  if ((kafka)); then kafka_down; fi
  if ((redis)); then redis_down; fi
  if ((purge)); then
    log "purging Kafka data and Redis dir in $STATE_DIR"
    rm -rf "$KAFKA_DATA" "$KAFKA_FORMATTED_BY" "$REDIS_DIR"
  fi
}

cmd_status() {
  local ok=0 pid
  if kafka_check_once; then
    if pid=$(kafka_managed_pid); then
      echo "kafka: up    $KAFKA_BOOTSTRAP (Kafka $(cat "$KAFKA_FORMATTED_BY" 2>/dev/null || echo "$KAFKA_VERSION"), pid $pid, log $KAFKA_LOG)"
      kafka_files_report "$pid"
    else
      echo "kafka: up    $KAFKA_BOOTSTRAP (not started by this script)"
    fi
  else
    ok=1
    local why
    why=$(head -c 300 "$STATE_DIR/kafka-check.err" | tr -s '\n' ' ')
    echo "kafka: DOWN  $KAFKA_BOOTSTRAP (${why% })"
  fi
  if redis_ping; then
    if pid=$(redis_managed_pid); then
      echo "redis: up    $HOST:$REDIS_PORT (pid $pid, log $REDIS_LOG)"
    else
      echo "redis: up    $HOST:$REDIS_PORT (not started by this script)"
    fi
  else
    ok=1
    echo "redis: DOWN  $HOST:$REDIS_PORT"
  fi
  if ((ok == 0)); then
    print_env
  fi
  return "$ok"
}

cmd_logs() {
  local f
  if [[ ${1:-} == -f ]]; then
    exec tail -n 20 -F "$KAFKA_LOG" "$REDIS_LOG"
  fi
  for f in "$KAFKA_LOG" "$REDIS_LOG"; do
    echo "==> $f <=="
    if [[ -f $f ]]; then tail -n "${LOG_LINES:-40}" "$f"; else echo "(no such file yet)"; fi
  done
}

cmd_install() { # what up fetches and installs, nothing started
  ensure_kafka_jars
  ensure_java
  ensure_redis
  log "install: Kafka $KAFKA_VERSION jars, Java and redis-server are here"
}

cmd_browser() { # headless Chromium for the dashboard test; prints the env line to export
  local path
  path=$(command -v chromium || command -v chromium-browser || true)
  if [[ -z $path ]]; then
    apt_install chromium
    path=$(command -v chromium) || die "chromium is not on PATH after apt-get install"
  fi
  log "browser: $("$path" --version 2>/dev/null | head -n 1)"
  printf 'export RECSYS_CHROMIUM=%q\n' "$path"
}

main() {
  [[ -n $KAFKA_VERSION ]] || die "could not read kafka.version from $POM"
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    install) cmd_install "$@" ;;
    browser) cmd_browser "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage
      exit 2
      ;;
  esac
}

main "$@"
