#!/usr/bin/env bash
# Runs every test Sluice has: formatting, lints, unit, property, stress and end-to-end tests.
# Installs what the tests need first, idempotently (fast when already present).
# CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '==> %s\n' "$*" >&2; }

ensure_tools() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is not on PATH; install Rust (rustup) first" >&2
    exit 1
  fi
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

  # Real peers the tests talk to, from Debian's packages. rsyslogd lives in /usr/sbin.
  local missing=()
  [ -x /usr/sbin/rsyslogd ] || command -v rsyslogd >/dev/null 2>&1 || missing+=(rsyslog)
  ls /usr/lib/*/rsyslog/lmnsd_ossl.so >/dev/null 2>&1 || missing+=(rsyslog-openssl)
  command -v logger >/dev/null 2>&1 || missing+=(bsdutils)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)  # the HTTPS receiver in tests/fixtures
  command -v jq >/dev/null 2>&1 || missing+=(jq)            # Strøm's documented `curl | jq` call
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # The fault tests: descriptor limits (prlimit), a tiny tmpfs (mount), signals (kill).
  command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
  command -v mount >/dev/null 2>&1 || missing+=(mount)
  [ -x /usr/bin/kill ] || [ -x /bin/kill ] || missing+=(procps)
  # The web page's tests drive Debian's headless Chromium over its DevTools socket.
  [ -x "${SLUICE_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium fonts-dejavu-core)
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi

  # A real S3-compatible server for the archive tests: moto, from PyPI, in a venv of its own.
  local tools="${SLUICE_TEST_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-test-tools}"
  if [ ! -x "$tools/moto/bin/moto_server" ]; then
    log "installing moto[server] into $tools/moto"
    if ! python3 -m venv "$tools/moto" 2>/dev/null; then
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$tools/moto"
    fi
    "$tools/moto/bin/pip" install -q --disable-pip-version-check 'moto[server]'
  fi
  export SLUICE_MOTO_SERVER="$tools/moto/bin/moto_server"

  # Real Python clients, from PyPI, in a venv of their own: prometheus-client's text parsers
  # for /metrics, and the websockets client for tails over wss://.
  if [ ! -x "$tools/py/bin/python" ] || ! "$tools/py/bin/python" -c 'import prometheus_client, websockets' 2>/dev/null; then
    log "installing prometheus-client and websockets into $tools/py"
    python3 -m venv "$tools/py"
    "$tools/py/bin/pip" install -q --disable-pip-version-check 'prometheus-client>=0.20' 'websockets>=12'
  fi
  export SLUICE_PYTHON="$tools/py/bin/python"
}

ensure_tools

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run"
  cargo nextest run --workspace --locked --no-fail-fast
else
  log "cargo test (cargo-nextest not found)"
  cargo test --workspace --locked --no-fail-fast
fi
