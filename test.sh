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
  # Today's tests need only the Rust toolchain: the WebSocket client (tokio-tungstenite) and the
  # HTTP client (reqwest) are dev-time crates. Peers arrive with the issues that need them.
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
