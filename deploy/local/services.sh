#!/usr/bin/env bash
# Local real services for M5: Kafka 4.x (KRaft, jars from Maven Central), Redis, Prometheus.
# Usage: deploy/local/services.sh {start|stop|status|url} [kafka|redis|prometheus|all]
# `url SERVICE` prints the address clients use (Redis's with its password: M5_REDIS_URL=$(... url redis)).
# Idempotent: start on a running service is a no-op; stop is graceful (TERM, wait, KILL).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${M5_CACHE_DIR:-$REPO/.cache/m5}"
REDIS_PORT="${M5_REDIS_PORT:-6379}"
KAFKA_PORT="${M5_KAFKA_PORT:-9092}"
KAFKA_CTL_PORT="${M5_KAFKA_CONTROLLER_PORT:-9093}"
PROM_PORT="${M5_PROMETHEUS_PORT:-9090}"
SERVICE_PORT="${M5_PORT:-8000}"
INDEXER_METRICS_PORT="${M5_METRICS_PORT:-9108}"
PY="${M5_PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

log() { echo "[services] $*" >&2; }
die() { echo "[services] error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: install it with \`$2\` (or run \`make system-deps\`)"; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for NAME TIMEOUT_S LOGFILE CMD...
  local name=$1 timeout=$2 logfile=$3; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$logfile" >&2 2>/dev/null || true
      die "$name did not become ready within ${timeout}s; see $logfile"
    fi
    sleep 0.3
  done
}

secret() {  # secret NAME: $M5_<NAME>_PASSWORD, else one generated on first use and kept in $CACHE/NAME/password (0600)
  local var; var="M5_$(echo "$1" | tr '[:lower:]' '[:upper:]')_PASSWORD"
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  local f="$CACHE/$1/password"
  if [ ! -s "$f" ]; then
    mkdir -p "$CACHE/$1"
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$f")
  fi
  cat "$f"
}

stop_pid() {  # stop_pid NAME PIDFILE
  local name=$1 pidfile=$2
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not stop in 20s, killing"; kill -KILL "$pid" 2>/dev/null || true; }
    log "$name stopped"
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------- Redis (password required)
# The password: $M5_REDIS_PASSWORD, else one generated on first use and kept in $CACHE/redis/password (0600).
# Clients take it in the URL that `services.sh url redis` prints (the tests' fixtures and M5_REDIS_URL).
redis_password() { secret redis; }
redis_cli() { REDISCLI_AUTH="$(redis_password)" redis-cli --no-auth-warning -p "$REDIS_PORT" "$@"; }
redis_ping() { redis_cli ping | grep -q PONG; }
start_redis() {
  need redis-server "apt-get install -y redis-server"
  local d="$CACHE/redis"; mkdir -p "$d"
  if redis_ping 2>/dev/null; then log "redis already up on :$REDIS_PORT"; return; fi
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    die "a Redis without a password (or with another one) answers on :$REDIS_PORT; stop it, or set M5_REDIS_PASSWORD to its password"
  fi
  # The password goes in a config file readable by us only, never on a command line that `ps` shows.
  (umask 077; printf 'requirepass "%s"\n' "$(redis_password)" > "$d/auth.conf")
  redis-server "$d/auth.conf" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$d" --daemonize yes \
    --pidfile "$d/redis.pid" --logfile "$d/redis.log" --appendonly yes --appendfsync everysec \
    --save "" --protected-mode yes
  wait_for redis 20 "$d/redis.log" redis_ping
  log "redis up on :$REDIS_PORT (password required, AOF everysec, data in $d); URL: \$(deploy/local/services.sh url redis)"
}
stop_redis() {
  if redis_ping 2>/dev/null; then redis_cli shutdown >/dev/null 2>&1 || true; fi
  stop_pid redis "$CACHE/redis/redis.pid"
}
url_redis() { echo "redis://:$(redis_password)@127.0.0.1:$REDIS_PORT/0"; }
status_redis() { redis_ping 2>/dev/null && echo "redis       up    127.0.0.1:$REDIS_PORT" || { echo "redis       down"; return 1; }; }

# ---------------------------------------------------------------- Kafka (KRaft, combined mode)
kafka_libs() {
  local libs="$CACHE/kafka/libs"
  if [ ! -f "$libs/.complete" ] || [ "$HERE/kafka/pom.xml" -nt "$libs/.complete" ]; then
    need mvn "apt-get install -y maven"
    log "resolving Kafka jars from Maven Central into $libs"
    rm -rf "$libs"; mkdir -p "$libs"
    mvn -q -B -Dstyle.color=never -f "$HERE/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$libs" >&2 || die "maven could not resolve the Kafka jars"
    touch "$libs/.complete"
  fi
  echo "$libs"
}
# Clients authenticate with SASL SCRAM-SHA-256 as user m5: $M5_KAFKA_PASSWORD, else one generated on first use and
# kept in $CACHE/kafka/password (0600); the credentials are written into the storage when it is formatted.
KAFKA_USER=m5
kafka_password() { secret kafka; }
url_kafka() { echo "kafka://$KAFKA_USER:$(kafka_password)@127.0.0.1:$KAFKA_PORT"; }
kafka_topics() { M5_KAFKA_BOOTSTRAP="$(url_kafka)" "$PY" "$HERE/kafka_topics.py" "$@"; }
kafka_ready() { kafka_topics --check; }
start_kafka() {
  need java "apt-get install -y openjdk-17-jre-headless"
  local d="$CACHE/kafka"; mkdir -p "$d/data"
  # A broker that takes our credentials counts as up, whoever started it (another checkout sharing
  # M5_KAFKA_PASSWORD, a CI clone).
  if kafka_ready 2>/dev/null; then
    kafka_topics --create-defaults
    log "kafka already up on :$KAFKA_PORT"; return
  fi
  if pid_alive "$d/kafka.pid"; then  # ours, still booting: wait instead of starting a second broker
    wait_for kafka 90 "$d/kafka.log" kafka_ready
    kafka_topics --create-defaults
    log "kafka already up on :$KAFKA_PORT"; return
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
    die "something else listens on :$KAFKA_PORT and does not take our credentials (a broker of another checkout?); stop it, or set M5_KAFKA_PASSWORD to its password"
  fi
  local libs; libs=$(kafka_libs)
  local pw; pw=$(kafka_password)
  (umask 077; cat > "$d/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CTL_PORT
listeners=SASL_PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTL_PORT
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_USER" password="$pw";
log.dirs=$d/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.flush.interval.messages=1
PROPS
  )
  local java=(java -Xms256m -Xmx512m -XX:+UseG1GC -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties"
              -Dkafka.log.file="$d/kafka.log" -cp "$libs/*")
  if [ -f "$d/data/meta.properties" ] && [ ! -f "$d/data/.scram" ]; then
    # Storage formatted before the broker required credentials holds no SCRAM user: start it afresh (a dev cache).
    log "kafka storage predates SCRAM credentials: formatting it again (its topics and records are dropped)"
    rm -rf "$d/data"; mkdir -p "$d/data"
  fi
  if [ ! -f "$d/data/meta.properties" ]; then
    local cid; cid=$("${java[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)
    "${java[@]}" kafka.tools.StorageTool format --standalone -t "$cid" -c "$d/server.properties" \
      --add-scram "SCRAM-SHA-256=[name=$KAFKA_USER,password=$pw]" >>"$d/kafka.log" 2>&1 \
      || die "kafka storage format failed; see $d/kafka.log"
    touch "$d/data/.scram"
    log "kafka storage formatted (cluster $cid, SCRAM user $KAFKA_USER)"
  fi
  nohup "${java[@]}" kafka.Kafka "$d/server.properties" >>"$d/kafka.out" 2>&1 &
  echo $! > "$d/kafka.pid"
  wait_for kafka 90 "$d/kafka.log" kafka_ready
  kafka_topics --create-defaults
  log "kafka up on :$KAFKA_PORT (KRaft combined, SASL SCRAM-SHA-256, data in $d/data); address: \$(deploy/local/services.sh url kafka)"
}
stop_kafka() { stop_pid kafka "$CACHE/kafka/kafka.pid"; }
status_kafka() { kafka_ready 2>/dev/null && echo "kafka       up    127.0.0.1:$KAFKA_PORT" || { echo "kafka       down"; return 1; }; }

# ---------------------------------------------------------------- Prometheus
prom_ready() { curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready"; }
start_prometheus() {
  need prometheus "apt-get install -y prometheus"
  local d="$CACHE/prometheus"; mkdir -p "$d/data"
  # Our config with this machine's ports; rule files are read from the repo.
  sed -e "s#127.0.0.1:8000#127.0.0.1:$SERVICE_PORT#; s#127.0.0.1:9108#127.0.0.1:$INDEXER_METRICS_PORT#" \
      -e "s#rules/#$REPO/deploy/prometheus/rules/#" \
      "$REPO/deploy/prometheus/prometheus.yml" > "$d/prometheus.yml"
  if prom_ready >/dev/null 2>&1; then
    curl -fsS -X POST "http://127.0.0.1:$PROM_PORT/-/reload" >/dev/null || true  # pick up edited config and rules
    log "prometheus already up on :$PROM_PORT (config reloaded)"; return
  fi
  if pid_alive "$d/prometheus.pid"; then  # ours, still booting
    wait_for prometheus 30 "$d/prometheus.log" prom_ready
    log "prometheus already up on :$PROM_PORT"; return
  fi
  nohup prometheus --config.file="$d/prometheus.yml" --storage.tsdb.path="$d/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle >>"$d/prometheus.log" 2>&1 &
  echo $! > "$d/prometheus.pid"
  wait_for prometheus 30 "$d/prometheus.log" prom_ready
  log "prometheus up on :$PROM_PORT"
}
stop_prometheus() { stop_pid prometheus "$CACHE/prometheus/prometheus.pid"; }
url_prometheus() { echo "http://127.0.0.1:$PROM_PORT"; }
status_prometheus() { prom_ready >/dev/null 2>&1 && echo "prometheus  up    127.0.0.1:$PROM_PORT" || { echo "prometheus  down"; return 1; }; }

# ---------------------------------------------------------------- dispatch
action="${1:-}"; target="${2:-all}"
case "$target" in all) targets=(redis kafka prometheus) ;; kafka|redis|prometheus) targets=("$target") ;;
  *) die "unknown service '$target' (kafka|redis|prometheus|all)" ;; esac
case "$action" in
  start) for t in "${targets[@]}"; do "start_$t"; done ;;
  stop) for t in "${targets[@]}"; do "stop_$t"; done ;;
  status) rc=0; for t in "${targets[@]}"; do "status_$t" || rc=1; done; exit $rc ;;
  url) [ "${#targets[@]}" = 1 ] || die "url needs one service (kafka|redis|prometheus)"; "url_${targets[0]}" ;;
  *) die "usage: $0 {start|stop|status|url} [kafka|redis|prometheus|all]" ;;
esac
