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
  log "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# The browser tests (tests/browser.rs) drive Debian's chromium with
# playwright-core from npm, and Debian's firefox-esr (the Web Push test: the
# one browser that subscribes with no internet) with a push service in
# Node (ws from npm). Installed here when missing; a second run only checks
# (apt-get only without /usr/bin/chromium or /usr/bin/firefox-esr, npm ci
# only when package-lock.json changed since the last one).
setup_browser() {
  local sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  local missing=()
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  [[ -x /usr/bin/firefox-esr ]] || missing+=(firefox-esr)
  if ((${#missing[@]})); then
    log "installing Debian's ${missing[*]} for the browser tests"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "the browser tests need Node.js 20+ and npm on PATH"
    exit 1
  fi
  local stamp=tests/browser/node_modules/.package-lock.stamp
  if [[ ! -f $stamp ]] || ! cmp -s tests/browser/package-lock.json "$stamp"; then
    log "npm ci in tests/browser (playwright-core, ws, typescript)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/browser/package-lock.json "$stamp"
  fi
}
setup_browser

# The Web Push tests POST to a test push service in Python
# (tests/push/push_service.py), which decrypts with libraries independent of
# Herald's. Its venv is target/push-venv, made when missing and
# reinstalled only when tests/push/requirements.txt changed since.
setup_python() {
  local venv=target/push-venv
  local stamp=$venv/.requirements.stamp
  if [[ ! -f $stamp ]] || ! cmp -s tests/push/requirements.txt "$stamp"; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      log "installing Debian's python3-venv for the push service"
      local sudo=""
      [[ $(id -u) == 0 ]] || sudo=sudo
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    log "pip install -r tests/push/requirements.txt into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/push/requirements.txt
    cp tests/push/requirements.txt "$stamp"
  fi
  export HERALD_PUSH_PYTHON=$PWD/$venv/bin/python
}
setup_python

# tests/deploy.rs checks deploy/ with real tools: promtool (Debian's
# prometheus package; apt-get only when promtool is missing) for the alert
# rules and the dashboard's PromQL, and kubernetes-validate with PyYAML in
# the venv target/deploy-venv (remade only when tests/deploy/requirements.txt
# changed) for the Kubernetes manifests.
setup_deploy_tools() {
  if ! command -v promtool >/dev/null; then
    log "installing Debian's prometheus (promtool) for tests/deploy.rs"
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus >/dev/null
  fi
  local venv=target/deploy-venv
  local stamp=$venv/.requirements.stamp
  if [[ ! -f $stamp ]] || ! cmp -s tests/deploy/requirements.txt "$stamp"; then
    log "pip install -r tests/deploy/requirements.txt into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
    cp tests/deploy/requirements.txt "$stamp"
  fi
  export HERALD_DEPLOY_VENV=$PWD/$venv
}
setup_deploy_tools

# Build before starting Kafka, so the broker is not kept waiting. The
# smoke run at the end needs target/debug/herald-bench and the herald it
# starts beside itself; the tests alone do not build herald-bench's binary.
log "building tests, herald and herald-bench"
cargo test --workspace --all-targets --locked --no-run
cargo build --locked -p herald -p herald-bench

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

log "cargo test --workspace --all-targets"
cargo test --workspace --all-targets --locked "$@"

# A short bench run (debug build, 50 WebSocket clients for 3 s, and the
# fan-out floor) keeps herald-bench working: fails on lost or duplicated
# messages. Latency figures of a debug build mean nothing here.
log "herald-bench smoke"
smoke_out=$(mktemp -d)
target/debug/herald-bench --brokers "$KAFKA_BOOTSTRAP" suite smoke --out "$smoke_out" >/dev/null
rm -rf "$smoke_out"
log "broker used: $KAFKA_BOOTSTRAP"
