#!/usr/bin/env bash
# Side by side: the same syslog-TCP -> file workload against Sluice (as a user starts it, and
# tuned), rsyslog (imtcp -> omfile with a `%msg%` template and async writing, its fastest file
# path), syslog-ng 3.38 (`syslog()` -> file with `$MSG`) and, when a `vector` binary is on PATH,
# Vector (syslog -> blackhole, its fastest path). Octet-counted RFC 5424 lines of ~160 bytes,
# over 1 and over 8 connections, sent by benches/send_prepared.py (prepared in memory, written
# in 1 MiB chunks: its own CPU is reported and negligible); each server in turn, RUNS times, in
# one run of this script. Prints a table of medians and ratios per connection count.
#
#   benches/compare.sh                      # 1,000,000 lines, 3 runs each, 1 and 8 connections
#   LINES=2000000 RUNS=5 CONNECTIONS=8 benches/compare.sh
#   benches/compare.sh drain                # one Sluice syslog drain into rsyslog instead
#
# `drain`: native envelopes into Sluice (sent by sluice-load), one syslog drain to rsyslog
# (imtcp -> omfile); the rate is lines in rsyslog's file per second, until all of them are there.
#
# Needs: cargo (builds sluice and sluice-load in release; or SLUICE_BIN names a folder with both
# built), rsyslog (installed with apt-get when missing and running as root; otherwise the exact
# command is printed; or RSYSLOGD names one), syslog-ng (unpacked beside rsyslog when running as
# root; skipped otherwise; or SYSLOG_NG_DIR holds one), python3, jq for `drain` and Vector.
set -euo pipefail

WORKLOAD=${1:-file}
case $WORKLOAD in file|drain) ;; *) echo "usage: $0 [file|drain]" >&2; exit 2 ;; esac
LINES=${LINES:-1000000}
RUNS=${RUNS:-3}
# Message text per line; with the header, a line is ~160 bytes.
SIZE=${SIZE:-108}
# Connections for the file workload, each its own app (so its own Sluice source); one table each.
CONNECTIONS=${CONNECTIONS:-"1 8"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/sluice-compare.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT

need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing $pkg (for $cmd)" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    fi
    command -v "$cmd" >/dev/null || { echo "missing: $cmd; install it with: sudo apt-get install -y $pkg" >&2; exit 1; }
}
[ "$WORKLOAD" = file ] || need jq jq
need python3 python3
# RSYSLOGD: an rsyslogd to run instead of the installed one (benches/device_pack.sh packs one).
RSYSLOGD=${RSYSLOGD:-$(command -v rsyslogd || echo /usr/sbin/rsyslogd)}
if [ ! -x "$RSYSLOGD" ]; then
    need rsyslogd rsyslog
    RSYSLOGD=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)
fi

# SLUICE_BIN: a folder holding sluice and sluice-load already built (a machine without cargo).
if [ -n "${SLUICE_BIN:-}" ]; then
    BIN=$(cd "$SLUICE_BIN" && pwd)
else
    echo "building sluice and sluice-load (release)" >&2
    (cd "$ROOT" && cargo build --release --quiet -p sluice -p sluice-load)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
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

# Each run prints: lines-per-second complete(true/false) peak-rss-MiB sender-cpu-seconds
#
# The sender is benches/send_prepared.py: each connection's lines are prepared in memory, then
# written in 1 MiB chunks, so its own CPU (reported) is negligible beside the server's; on 2
# cores a heavier sender steals the peers' threads. A run's rate is its lines over the time from
# the first byte sent to the last line written (polled every 20 ms).
SEND="$ROOT/benches/send_prepared.py"

# $1: pid; prints its peak RSS in MiB.
peak_rss() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Sends LINES over $CONNS connections to port $1, then waits until what $2 names holds LINES
# lines, or stops moving for 10 s; prints the rate, whether it completed, and the sender's CPU
# seconds. $2 is `file:PATH` (a file of `$MSG\n` lines, counted by its size: no reading) or
# `metrics:URL` (Sluice's persister counter). Polled from this one process, every 20 ms.
send_and_wait() {
    local port=$1 written=$2 out
    out=$(python3 "$SEND" "$port" "$LINES" "$SIZE" "$CONNS")
    python3 - "$out" "$written" "$LINES" "$((SIZE + 1))" <<'PY'
import json, os, sys, time, urllib.request
sent = json.loads(sys.argv[1]); kind, _, where = sys.argv[2].partition(":")
want, line_bytes = int(sys.argv[3]), int(sys.argv[4])
def written():
    if kind == "file":
        try:
            return os.stat(where).st_size // line_bytes
        except FileNotFoundError:
            return 0
    for line in urllib.request.urlopen(where, timeout=5).read().decode().splitlines():
        if line.startswith("sluice_persister_lines_total "):
            return int(float(line.split()[1]))
    return 0
last, moved = -1, time.monotonic()
while True:
    n = written()
    now = time.monotonic()
    if n >= want:
        break
    if n != last:
        last, moved = n, now
    elif now - moved > 10:
        break
    time.sleep(0.02)
print("%.0f %s %.3f" % (n / (now - sent["start"]), "true" if n >= want else "false", sent["sender_cpu_seconds"]))
PY
}

# $1: run, $2: default|tuned. Default is Sluice as a user starts it (only the ports and the
# directory set); tuned adds `fsync: never` (the peers here sync nothing either) and one writer
# thread per core (the default is one per two cores).
run_sluice_as() {
    local dir=$WORK/sluice-$2-$1 http syslog
    mkdir -p "$dir"
    http=$(free_port); syslog=$(free_port)
    {
        printf 'listen:\n  http: 127.0.0.1:%s\n  ingest: null\n  syslog_tcp: 127.0.0.1:%s\n  syslog_udp: null\n' "$http" "$syslog"
        printf 'log_storage:\n  local_dir: %s/logs\n' "$dir"
        if [ "$2" = tuned ]; then printf '  fsync: never\n  writers: %s\n' "$(nproc)"; fi
    } > "$dir/sluice.yaml"
    "$BIN/sluice" serve --config "$dir/sluice.yaml" >"$dir/out" 2>"$dir/err" &
    local pid=$!
    wait_port "$syslog"
    local written="metrics:http://127.0.0.1:$http/metrics"
    local r rss rate ok cpu
    r=$(send_and_wait "$syslog" "$written")
    rss=$(peak_rss "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    read -r rate ok cpu <<<"$r"
    echo "$rate $ok $rss $cpu"
}
run_sluice() { run_sluice_as "$1" default; }
run_sluice_tuned() { run_sluice_as "$1" tuned; }

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

# rsyslog at its fastest file path: imtcp -> omfile, `%msg%` template, async writing.
run_rsyslog() {
    local dir=$WORK/rsyslog-$1 r rss rate ok cpu
    start_rsyslog "$dir" msgonly
    r=$(send_and_wait "$RSYSLOG_PORT" "file:$dir/out.log")
    rss=$(peak_rss "$RSYSLOG_PID")
    kill "$RSYSLOG_PID"; wait "$RSYSLOG_PID" 2>/dev/null || true
    read -r rate ok cpu <<<"$r"
    echo "$rate $ok $rss $cpu"
}

# syslog-ng 3.38, `syslog()` source -> file with `$MSG`. It conflicts with rsyslog as a Debian
# package, so it is unpacked beside it (see ../shared/TOOLING.md) into $SYSLOG_NG_DIR.
SYSLOG_NG_DIR=${SYSLOG_NG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-test-tools/syslog-ng}
have_syslog_ng() {
    [ -x "$SYSLOG_NG_DIR/usr/sbin/syslog-ng" ] && return 0
    { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; } || return 1
    echo "unpacking syslog-ng into $SYSLOG_NG_DIR" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libivykis0 libnet1 libjson-c5 libwrap0 \
        libglib2.0-0 libpcre3 >/dev/null 2>&1 || return 1
    mkdir -p "$SYSLOG_NG_DIR"
    (cd "$WORK" && apt-get download -qq syslog-ng-core >/dev/null 2>&1 \
        && dpkg -x syslog-ng-core_*.deb "$SYSLOG_NG_DIR") || return 1
    [ -x "$SYSLOG_NG_DIR/usr/sbin/syslog-ng" ]
}

run_syslog_ng() {
    local dir=$WORK/syslog-ng-$1 port r rss rate ok cpu
    mkdir -p "$dir"
    port=$(free_port)
    cat > "$dir/syslog-ng.conf" <<EOF
@version: 3.38
source s { syslog(ip("127.0.0.1") port($port) transport("tcp") max-connections(64)); };
destination d { file("$dir/out.log" template("\$MSG\n")); };
log { source(s); destination(d); };
EOF
    LD_LIBRARY_PATH="$SYSLOG_NG_DIR/usr/lib/syslog-ng" "$SYSLOG_NG_DIR/usr/sbin/syslog-ng" -F \
        -f "$dir/syslog-ng.conf" --module-path="$SYSLOG_NG_DIR/usr/lib/syslog-ng/3.38" \
        -R "$dir/persist" -p "$dir/pid" -c "$dir/ctl" 2>"$dir/err" &
    local pid=$!
    wait_port "$port"
    r=$(send_and_wait "$port" "file:$dir/out.log")
    rss=$(peak_rss "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    read -r rate ok cpu <<<"$r"
    echo "$rate $ok $rss $cpu"
}

run_vector() {
    local dir=$WORK/vector-$1 port out rss
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
    # A blackhole writes nothing to count: the rate is how fast the sender got everything
    # through, which TCP's flow control holds to what Vector takes.
    out=$(python3 "$SEND" "$port" "$LINES" "$SIZE" "$CONNS")
    rss=$(peak_rss "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$out" | jq -r '"\(.lines / .send_seconds) true '"$rss"' \(.sender_cpu_seconds)"'
}

# Rings that hold the whole drain run, so that the drain (reading at rsyslog's pace) is never
# overrun: the rate measured is the drain's, not its losses.
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

peers=(sluice sluice_tuned rsyslog)
if have_syslog_ng; then
    peers+=(syslog_ng)
else
    echo "syslog-ng: not unpacked in $SYSLOG_NG_DIR and cannot be (run as root with apt-get), skipped" >&2
fi
if command -v vector >/dev/null && command -v jq >/dev/null; then
    peers+=(vector)
else
    echo "vector (or jq): not on PATH, skipped (install Vector from https://vector.dev/download/ to compare)" >&2
fi

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for CONNS in $CONNECTIONS; do
    declare -A rates=() mem=() complete=() cpus=()
    for run in $(seq "$RUNS"); do
        for p in "${peers[@]}"; do
            read -r rate ok rss cpu < <("run_$p" "$run")
            printf '%-12s %d conn run %d: %10.0f lines/s  complete=%s  peak RSS %s MiB  sender CPU %s s\n' "$p" "$CONNS" "$run" "$rate" "$ok" "$rss" "$cpu" >&2
            rates[$p]+="$rate "
            mem[$p]+="$rss "
            cpus[$p]+="$cpu "
            [ "$ok" = true ] || complete[$p]=no
        done
    done
    echo
    echo "syslog TCP -> file, $CONNS connection(s), $LINES lines of ~$((SIZE + 52)) bytes, median of $RUNS runs ($(nproc) cores, $(date -u +%Y-%m-%d))"
    echo
    printf '| %-44s | %12s | %14s | %13s | %16s |\n' "server and path" "lines/s" "Sluice / peer" "peak RSS MiB" "sender CPU s"
    printf '|%s|%s|%s|%s|%s|\n' "----------------------------------------------" "--------------:" "----------------:" "---------------:" "------------------:"
    sluice_rate=$(echo "${rates[sluice]}" | median)
    for p in "${peers[@]}"; do
        rate=$(echo "${rates[$p]}" | median)
        rss=$(echo "${mem[$p]}" | median)
        cpu=$(echo "${cpus[$p]}" | median)
        ratio=$(awk "BEGIN {printf \"%.2f\", $sluice_rate / $rate}")
        case $p in
            sluice) label="Sluice as started (syslog_tcp -> JSONL)" ;;
            sluice_tuned) label="Sluice tuned (fsync: never, writers: nproc)" ;;
            rsyslog) label="rsyslog (imtcp -> omfile %msg%, async)" ;;
            syslog_ng) label="syslog-ng (syslog() -> file \$MSG)" ;;
            vector) label="Vector (syslog -> blackhole)" ;;
        esac
        [ "${complete[$p]:-yes}" = yes ] || label="$label (INCOMPLETE)"
        printf '| %-44s | %12.0f | %14s | %13.1f | %16s |\n' "$label" "$rate" "$ratio" "$rss" "$cpu"
    done
    unset rates mem complete cpus
done
