#!/usr/bin/env bash
# Runs Herald's whole test suite against a real Apache Kafka broker.
#
#   scripts/test.sh            # starts the local broker (scripts/kafka.sh) if needed
#   KAFKA_BOOTSTRAP=host:9092 scripts/test.sh   # uses an existing broker
#
# Also checks formatting and clippy (HERALD_LINT=0 skips them). Extra
# arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

if [[ ${HERALD_LINT:-1} != 0 ]]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets --locked -- -D warnings
fi

# Build before starting Kafka, so the broker is not kept waiting.
log "building tests"
cargo test --all-targets --locked --no-run

started_here=0
if [[ -n ${KAFKA_BOOTSTRAP:-} ]]; then
  log "broker: external Kafka at $KAFKA_BOOTSTRAP (KAFKA_BOOTSTRAP)"
else
  if ! scripts/kafka.sh status >/dev/null 2>&1; then
    scripts/kafka.sh start
    started_here=1
  fi
  export KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT:-9092}"
  log "broker: Apache Kafka $(scripts/kafka.sh version 2>/dev/null || echo '?') (KRaft, one node, scripts/kafka.sh) at $KAFKA_BOOTSTRAP"
fi
if [[ $started_here == 1 ]]; then
  trap 'scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT
fi

log "cargo test --all-targets"
cargo test --all-targets --locked "$@"
log "broker used: $KAFKA_BOOTSTRAP"
