#!/usr/bin/env bash
# The 16-core rows of the speed targets, in one call on the device machine (a copy of this
# checkout, no cargo, no rsyslog, no network), from what benches/device_pack.sh packed:
#
#   benches/device_pack.sh                                  # here: -> target/device (~47 MB)
#   run: command "bash benches/device_run.sh target/device", carry ["target/device"]
#
# Rows (what is printed also in $OUT/summary.txt, every report and log in $OUT/details.tgz: the
# machine sends back at most 8 files):
# 1. native: sluice-load, N connections each to its own source, one tail per source, persister
#    on with its defaults (when_behind: block), N = 1 2 4 8; then N = 8 with `writers: nproc`.
# 2. syslog TCP -> file: benches/compare.sh with the packed Sluice, rsyslog and syslog-ng, 1 and 8
#    connections (needs python3 on the machine; left out with a line saying so otherwise).
#
# Takes ~6 minutes on 16 cores. DURATION, LINES and RUNS shorten it.
set -uo pipefail
PACK=$(cd "${1:-target/device}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/sluice-device.XXXXXX)}
WORK=$(mktemp -d /tmp/sluice-device-work.XXXXXX)
DURATION=${DURATION:-10}
LINES=${LINES:-4000000}
RUNS=${RUNS:-2}
export PATH=$PACK/bin:$PATH
exec > >(tee "$OUT/summary.txt") 2>&1
trap 'tar czf "$OUT/details.tgz" -C "$WORK" . && rm -rf "$WORK"' EXIT

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cores: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo
    grep MemTotal /proc/meminfo
    uname -r
    df -h /tmp | tail -1
} | tee "$WORK/machine.txt"

# One sluice-load run; prints one table row and keeps its JSON report.
native() {
    local n=$1 label=$2
    shift 2
    local report=$WORK/native-$label.json
    timeout $((DURATION + 120)) "$PACK/bin/sluice-load" --connections "$n" --sources "$n" \
        --tails "$n" --duration "$DURATION" --server "$PACK/bin/sluice" --json "$@" \
        2> "$WORK/native-$label.err" | tail -1 > "$report"
    if ! [ -s "$report" ]; then
        echo "| $n | $label | (no report: the end of native-$label.err follows) |"
        tail -3 "$WORK/native-$label.err"
        return
    fi
    if ! command -v python3 > /dev/null; then
        echo "| $n | $label | $(cat "$report") |"
        return
    fi
    python3 - "$report" "$n" "$label" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
tails = [t["envelopes_per_sec"] for t in d["tails"]]
p = d["persister"]
ingest = d["in_envelopes_per_sec"]
print("| %s | %s | %.2f | %.2f | %.0f%% | %s | %.2f | %.2f |" % (
    sys.argv[2], sys.argv[3], ingest / 1e6, p["envelopes_per_sec"] / 1e6,
    100 * min(tails) / ingest if tails and ingest else 0, p.get("announced_lost"),
    d["server_cpu_us_per_envelope"], d.get("loadgen_cpu_cores", 0)))
PY
}

echo
echo "native ingest -> N sources, N tails + persister ($DURATION s each)"
echo "| N | run | in M env/s | persisted M env/s | slowest tail / in | persister lost | server us/env | loadgen cores |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for n in 1 2 4 8; do
    native "$n" "default-$n"
done
printf 'log_storage:\n  local_dir: {logs}\n  writers: %s\n' "$(nproc)" > "$WORK/writers.yaml"
native 8 "writers-nproc-8" --config "$WORK/writers.yaml"
echo
echo "(the JSON reports: native-*.json in details.tgz)"

if command -v python3 > /dev/null; then
    echo
    echo "syslog TCP -> file ($LINES lines, $RUNS runs each)"
    RSYSLOGD=$PACK/bin/rsyslogd SYSLOG_NG_DIR=$PACK/syslog-ng SLUICE_BIN=$PACK/bin \
        LINES=$LINES RUNS=$RUNS CONNECTIONS="1 8" \
        timeout 420 bash "$ROOT/benches/compare.sh" 2> "$WORK/compare.err" | tee "$WORK/compare.txt"
    grep -E 'run [0-9]+:' "$WORK/compare.err" | tail -40
else
    echo "python3 is not on this machine: the syslog rows (benches/compare.sh) were left out"
fi
