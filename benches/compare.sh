#!/usr/bin/env bash
# Side by side: the same syslog-TCP -> file workload against Sluice, rsyslog (imtcp -> omfile)
# and, when a `vector` binary is on PATH, Vector (syslog -> blackhole, its fastest path; its file
# sink is ~30x slower). One connection, octet-counted RFC 5424 lines of ~160 bytes, sent flat out
# by sluice-load; each server in turn, RUNS times, in one run of this script. Prints a table of
# medians and ratios.
#
#   benches/compare.sh                      # 1,000,000 lines, 3 runs each
#   LINES=2000000 RUNS=5 benches/compare.sh
#   benches/compare.sh drain                # one Sluice syslog drain into rsyslog instead
#
# `drain`: native envelopes into Sluice, one syslog drain to rsyslog (imtcp -> omfile); the rate
# is lines in rsyslog's file per second, until all of them are there.
#
# Needs: cargo (builds sluice and sluice-load in release), rsyslog (installed with apt-get when
# missing and running as root; otherwise the exact command is printed), jq, python3.
set -euo pipefail

WORKLOAD=${1:-file}
case $WORKLOAD in file|drain) ;; *) echo "usage: $0 [file|drain]" >&2; exit 2 ;; esac
LINES=${LINES:-1000000}
RUNS=${RUNS:-3}
# Message text per line; with the header sluice-load writes, a line is 160 bytes.
SIZE=${SIZE:-90}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/sluice-compare.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing $pkg (for $cmd)" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    fi
    command -v "$cmd" >/dev/null || { echo "missing: $cmd; install it with: sudo apt-get install -y $pkg" >&2; exit 1; }
}
need jq jq
need python3 python3
RSYSLOGD=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)
if [ ! -x "$RSYSLOGD" ]; then
    need rsyslogd rsyslog
    RSYSLOGD=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)
fi

echo "building sluice and sluice-load (release)" >&2
(cd "$ROOT" && cargo build --release --quiet -p sluice -p sluice-load)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
LOAD="$BIN/sluice-load"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 200); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# Each run prints: lines-per-second complete(true/false) peak-rss-MiB
# Rings large enough to ride out the burst: consumers never slow ingest, so with the default
# rings (65,536 entries) a flat-out sender would overrun them and the output would never be
# complete. $2: ring entries (the persister keeps up, so a quarter of the lines is plenty; a drain
# into rsyslog falls behind the sender, so that run holds all of them).
sluice_config() {
    local dir=$1 entries=$2
    mkdir -p "$dir"
    cat > "$dir/extra.yaml" <<EOF
router:
  ring_max_entries: $entries
  ring_max_bytes: $((entries * 1024))
  memory_budget_bytes: $((entries * 2048))
log_storage:
  local_dir: $dir/logs
  max_file_size_bytes: 10737418240
EOF
}

run_sluice() {
    local dir=$WORK/sluice-$1
    sluice_config "$dir" $((LINES / 4))
    "$LOAD" --protocol syslog --size "$SIZE" --count "$LINES" --duration 600 --tails 0 \
        --batch 100 --config "$dir/extra.yaml" --json 2>"$dir/err" | tail -1 > "$dir/report.json"
    jq -r '[.persister.envelopes_per_sec, (.persister.lines >= .sent and .persister.announced_lost == 0), .server_peak_rss_mib] | @tsv' "$dir/report.json"
}

# Starts rsyslog (imtcp -> omfile into $1/out.log) on a free port; sets RSYSLOG_PID, RSYSLOG_PORT.
# $2: the omfile template (rsyslog's default file format when empty).
start_rsyslog() {
    local dir=$1 template=${2:-}
    mkdir -p "$dir/spool"
    RSYSLOG_PORT=$(free_port)
    local port=$RSYSLOG_PORT
    cat > "$dir/rsyslog.conf" <<EOF
global(workDirectory="$dir/spool")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="$port" ruleset="bench" supportOctetCountedFraming="on")
template(name="msgonly" type="string" string="%msg%\n")
ruleset(name="bench") {
  action(type="omfile" file="$dir/out.log" asyncWriting="on" ioBufferSize="256k" flushOnTXEnd="off" flushInterval="1"${template:+ template=\"$template\"})
}
EOF
    "$RSYSLOGD" -n -f "$dir/rsyslog.conf" -i "$dir/rsyslog.pid" 2>"$dir/rsyslog.err" &
    RSYSLOG_PID=$!
    wait_port "$port"
}

run_rsyslog() {
    local dir=$WORK/rsyslog-$1
    start_rsyslog "$dir"
    local port=$RSYSLOG_PORT pid=$RSYSLOG_PID
    "$LOAD" --protocol syslog --size "$SIZE" --count "$LINES" --duration 600 --tails 0 \
        --batch 100 --syslog "127.0.0.1:$port" --pid "$pid" --wait-lines "$dir/out.log" \
        --json 2>"$dir/err" | tail -1 > "$dir/report.json"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    jq -r '[.file.lines_per_sec, .file.complete, .server_peak_rss_mib] | @tsv' "$dir/report.json"
}

run_vector() {
    local dir=$WORK/vector-$1 port
    mkdir -p "$dir/data"
    port=$(free_port)
    cat > "$dir/vector.toml" <<EOF
data_dir = "$dir/data"
[sources.in]
type = "syslog"
address = "127.0.0.1:$port"
mode = "tcp"
[sinks.out]
type = "blackhole"
inputs = ["in"]
print_interval_secs = 0
EOF
    vector --quiet --config "$dir/vector.toml" 2>"$dir/vector.err" &
    local pid=$!
    wait_port "$port"
    # A blackhole writes nothing to count: the rate is what the sender got through one
    # connection, which TCP's flow control holds to what Vector takes.
    "$LOAD" --protocol syslog --size "$SIZE" --count "$LINES" --duration 600 --tails 0 \
        --batch 100 --syslog "127.0.0.1:$port" --pid "$pid" --json 2>"$dir/err" | tail -1 > "$dir/report.json"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    jq -r '[.in_envelopes_per_sec, true, .server_peak_rss_mib] | @tsv' "$dir/report.json"
}

run_drain() {
    local dir=$WORK/drain-$1
    # rsyslog is only the receiver here: the cheapest template, so that it limits as little as it can.
    start_rsyslog "$dir" msgonly
    sluice_config "$dir" "$LINES"
    "$LOAD" --protocol native --size 150 --count "$LINES" --duration 600 --tails 0 --drains 1 \
        --drain-url "syslog://127.0.0.1:$RSYSLOG_PORT" --wait-lines "$dir/out.log" \
        --config "$dir/extra.yaml" --json 2>"$dir/err" | tail -1 > "$dir/report.json"
    kill "$RSYSLOG_PID"; wait "$RSYSLOG_PID" 2>/dev/null || true
    jq -r '[.file.lines_per_sec, (.file.complete and .drains.announced_lost == 0), .server_peak_rss_mib] | @tsv' "$dir/report.json"
}

if [ "$WORKLOAD" = drain ]; then
    for run in $(seq "$RUNS"); do
        read -r rate ok rss < <(run_drain "$run")
        printf 'drain run %d: %10.0f messages/s into rsyslog  complete=%s  Sluice peak RSS %s MiB\n' "$run" "$rate" "$ok" "$rss"
    done
    exit 0
fi

peers=(sluice rsyslog)
if command -v vector >/dev/null; then
    peers+=(vector)
else
    echo "vector: not on PATH, skipped (install it from https://vector.dev/download/ to compare)" >&2
fi

declare -A rates mem complete
for run in $(seq "$RUNS"); do
    for p in "${peers[@]}"; do
        read -r rate ok rss < <("run_$p" "$run")
        printf '%-8s run %d: %10.0f lines/s  complete=%s  peak RSS %s MiB\n' "$p" "$run" "$rate" "$ok" "$rss" >&2
        rates[$p]+="$rate "
        mem[$p]+="$rss "
        [ "$ok" = true ] || complete[$p]=no
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo
echo "syslog TCP -> file, 1 connection, $LINES lines of $((SIZE + 70)) bytes, median of $RUNS runs ($(nproc) cores, $(date -u +%Y-%m-%d))"
echo
printf '| %-40s | %12s | %14s | %13s |\n' "server and path" "lines/s" "Sluice / peer" "peak RSS MiB"
printf '|%s|%s|%s|%s|\n' "------------------------------------------" "--------------:" "----------------:" "---------------:"
sluice_rate=$(echo "${rates[sluice]}" | median)
for p in "${peers[@]}"; do
    rate=$(echo "${rates[$p]}" | median)
    rss=$(echo "${mem[$p]}" | median)
    case $p in
        sluice) label="Sluice (syslog_tcp -> JSONL persister)"; ratio="1.00" ;;
        rsyslog) label="rsyslog (imtcp -> omfile, async)"; ratio=$(awk "BEGIN {printf \"%.2f\", $sluice_rate / $rate}") ;;
        vector) label="Vector (syslog -> blackhole)"; ratio=$(awk "BEGIN {printf \"%.2f\", $sluice_rate / $rate}") ;;
    esac
    [ "${complete[$p]:-yes}" = yes ] || label="$label (INCOMPLETE)"
    printf '| %-40s | %12.0f | %14s | %13.1f |\n' "$label" "$rate" "$ratio" "$rss"
done
