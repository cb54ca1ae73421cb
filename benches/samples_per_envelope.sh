#!/usr/bin/env bash
# CPU samples per million envelopes published, for one binary, in the steady state of many
# active sources: where hardware counters are not exposed (this VM), comparing two builds by
# samples per envelope in the same sitting is steadier than comparing their rates.
#
#   benches/samples_per_envelope.sh target/bench/sluice-old [SOURCES]
#
# Runs sluice-load (--spread, no tail, --warmup 8) against the binary, records 5 s of
# `perf record -F 999 -p` after the warm-up, and prints the samples per million envelopes
# published in that window, for the whole server and the publish path's functions.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLUICE=$(realpath "${1:?the sluice binary to measure}")
SOURCES=${2:-100000}
LOAD=${LOAD:-$(dirname "$SLUICE")/sluice-load}
[ -x "$LOAD" ] || LOAD=$ROOT/target/release/sluice-load
WORK=$(mktemp -d /tmp/sluice-samples.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$LOAD" --duration 16 --sources "$SOURCES" --spread --tails 0 --warmup 8 --server "$SLUICE" \
    --json 2> "$WORK/err" > "$WORK/report" &
LOADPID=$!
for _ in $(seq 300); do grep -q "warmed up" "$WORK/err" 2>/dev/null && break; sleep 1; done
sleep 3
PID=$(pgrep -f "^$SLUICE serve" | head -1)
published() {
    local addr n
    for addr in $(ss -ltnp | grep "pid=$PID," | grep -o '127.0.0.1:[0-9]*'); do
        n=$(curl -s -m 1 "http://$addr/metrics" 2> /dev/null \
            | awk '/^sluice_router_published_total/ {print $2}' || true)
        if [ -n "$n" ]; then
            echo "$n"
            return
        fi
    done
}
before=$(published)
perf record -F 999 -g -o "$WORK/perf.data" -p "$PID" -- sleep 5 > /dev/null 2>&1
after=$(published)
wait "$LOADPID" || true
perf report -i "$WORK/perf.data" --no-children --sort symbol -g none -F sample,sym 2> /dev/null \
    | grep -E '^ +[0-9]+ ' > "$WORK/symbols" || true
python3 - "$before" "$after" "$WORK/symbols" <<'PY'
import re, sys
n = int(sys.argv[2]) - int(sys.argv[1])
rows = []
for line in open(sys.argv[3]):
    m = re.match(r'\s*(\d+)\s+\[.\]\s+(.*?)\s*$', line)
    if m:
        rows.append((int(m.group(1)), m.group(2)))
total = sum(s for s, _ in rows)
print(f"{n / 1e6:.2f} M envelopes published in 5 s; {total / n * 1e6:.0f} samples per M envelopes")
for s, name in sorted(rows, reverse=True)[:12]:
    print(f"{s / n * 1e6:8.0f}  {name[:100]}")
PY
