#!/usr/bin/env bash
# One busy source among many idle ones: starts a Sluice, gives IDLE sources one line each
# (sluice-load --spread --count), then measures one native connection into one source with
# the persister on (no tail). Prints sluice-load's JSON report of the second run.
#
#   benches/idle_sources.sh                               # target/release/sluice, 100,000 idle
#   IDLE=0 benches/idle_sources.sh                        # the same without idle sources
#   SLUICE=target/bench/sluice-old DURATION=20 benches/idle_sources.sh
#   FIREHOSE=1 benches/idle_sources.sh                    # and a firehose tail reading it all
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLUICE=${SLUICE:-$ROOT/target/release/sluice}
LOAD=${LOAD:-$(dirname "$SLUICE")/sluice-load}
[ -x "$LOAD" ] || LOAD=$ROOT/target/release/sluice-load
IDLE=${IDLE:-100000}
FIREHOSE=${FIREHOSE:-0}
DURATION=${DURATION:-10}
WORK=$(mktemp -d /tmp/sluice-idle.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); INGEST=$(free_port)
# Past 100,000 idle sources, router.max_sources is raised to fit (builds older than that
# setting refuse it, so it is written only then).
limit=""
[ "$IDLE" -gt 100000 ] && limit="router:\n  max_sources: $((IDLE + 1))\n"
printf "listen:\n  http: 127.0.0.1:%s\n  ingest: 127.0.0.1:%s\n  syslog_tcp: null\n  syslog_udp: null\n${limit}log_storage:\n  local_dir: %s/logs\n" \
    "$HTTP" "$INGEST" "$WORK" > "$WORK/sluice.yaml"
SLUICE_LOG=warn "$SLUICE" serve --config "$WORK/sluice.yaml" > "$WORK/out" 2> "$WORK/err" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do grep -q '^ready' "$WORK/out" && break; sleep 0.1; done
attach=(--http "127.0.0.1:$HTTP" --ingest "127.0.0.1:$INGEST" --pid "$PID" --settle 30 --json)
if [ "$IDLE" -gt 0 ]; then
    "$LOAD" "${attach[@]}" --tails 0 --sources "$IDLE" --spread --count "$IDLE" > /dev/null 2>&1
    sleep 2
fi
measured=(--sources 1 --duration "$DURATION" --tails 0)
[ "$FIREHOSE" = 1 ] && measured=(--sources 1 --duration "$DURATION" --firehose --tails 1)
"$LOAD" "${attach[@]}" "${measured[@]}" 2> /dev/null | tail -1
