#!/usr/bin/env bash
# Runs herald-bench's scenarios (issue 6's p1…p7, push: Web Push, issue
# 12, f1…f4: faults under load, issue 13, and issue 17's load curve,
# write delay, noisy neighbours, permessage-deflate and the peer,
# Centrifugo) against a real Kafka broker.
#
#   scripts/bench.sh SCENARIO [--duration S] [--clients N]
#     SCENARIO: p1 p2 p3 p4 p5 p6 p7 push peer f1 f2 f3 f4 p2-noisy
#     p3-noisy curve delay deflate smoke, or all (curve delay p6 p3
#     p3-noisy p2 p2-noisy p7 p1 p4 p5 push peer f1 f2 f4 f3 deflate); any
#     case, another name exits 64
#     curve: 10,000 and 2,000 WebSocket clients from 50k to 1M
#     deliveries/s, Herald and the floor (--duration: seconds per point,
#     default 10); delay: ws.write_delay 0/2/5/10 ms at three points;
#     p2-noisy, p3-noisy: P2 and P3 with a CPU hog on one core for 10 s;
#     deflate: bytes and CPU per delivery with and without
#     permessage-deflate; peer: Herald and Centrifugo v6.9.1 (installed
#     with go install once), each alone, 10 s per point
#     f1 broker restart (a broker of its own on a spare port), f2 SIGKILL
#     of one of two nodes, f3 a 30-minute soak (--duration 1800), f4 1%
#     slow readers; --duration is seconds of records (f1, f2 40; f4 60)
#   KAFKA_BOOTSTRAP=host:9092 scripts/bench.sh p3   # uses an existing broker
#
# Builds herald and herald-bench in release once, starts the local broker
# (scripts/kafka.sh) when KAFKA_BOOTSTRAP is unset, and writes
# bench/results/<scenario>.json, summary.md and chart.svg
# (BENCH_OUT overrides the directory). The smoke scenario exits 1 when it
# loses or duplicates messages. For peer (and all) it first installs
# Centrifugo v6.9.1 with `go install` into target/peer/bin, once: the
# binary is kept while Go's build info in it says v6.9.1.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench.sh: %s\n' "$*" >&2; }
[[ $# -ge 1 ]] || { sed -n '2,30p' "$0" >&2; exit 64; }
scenario=$1
shift
out=${BENCH_OUT:-bench/results}

# Both land in target/release/: the suite starts the herald beside itself.
log "cargo build --release -p herald -p herald-bench"
cargo build --release --locked -p herald -p herald-bench

# The peer: Centrifugo v6.9.1 from the Go module proxy, built here (no
# other download). `go install` sets no version ldflags, so the binary's
# own `centrifugo version` says v0.0.0; `go version -m` reads the module
# version Go recorded in it.
CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v6
CENTRIFUGO_VERSION=v6.9.1
install_centrifugo() {
  local bin=$PWD/target/peer/bin/centrifugo go=${GO:-go}
  command -v "$go" >/dev/null 2>&1 || go=/usr/local/go/bin/go
  command -v "$go" >/dev/null 2>&1 || { log "peer needs Go (set GO=/path/to/go) to install Centrifugo"; exit 69; }
  if [[ -x $bin ]] && "$go" version -m "$bin" 2>/dev/null |
    grep -qE "^[[:space:]]+mod[[:space:]]+$CENTRIFUGO_MODULE[[:space:]]+$CENTRIFUGO_VERSION[[:space:]]"; then
    log "centrifugo: $CENTRIFUGO_MODULE $CENTRIFUGO_VERSION in target/peer/bin (cached)"
    return
  fi
  log "centrifugo: go install $CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION into target/peer/bin (a few minutes, once)"
  mkdir -p target/peer/bin
  GOBIN=$PWD/target/peer/bin "$go" install "$CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION"
}
# BENCH_CENTRIFUGO: another Centrifugo binary (herald-bench checks its
# version), nothing installed.
case ${scenario,,} in
  peer | all)
    if [[ -z ${BENCH_CENTRIFUGO:-} ]]; then
      install_centrifugo
      export BENCH_CENTRIFUGO=$PWD/target/peer/bin/centrifugo
    fi
    ;;
esac

started_here=0
if [[ -n ${KAFKA_BOOTSTRAP:-} ]]; then
  log "broker: external Kafka at $KAFKA_BOOTSTRAP"
else
  if ! scripts/kafka.sh status >/dev/null 2>&1; then
    scripts/kafka.sh start
    started_here=1
  fi
  export KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT:-9092}"
fi
if [[ $started_here == 1 ]]; then
  trap 'scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT
fi

target/release/herald-bench --brokers "$KAFKA_BOOTSTRAP" suite "$scenario" --out "$out" "$@"

log "results in $out/"
