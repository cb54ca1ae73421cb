#!/usr/bin/env bash
# Packs what the 16-core rows need into one ignored folder that travels to a machine with no
# Rust toolchain, no rsyslog and no network (see ../shared/TOOLING.md): stripped release
# binaries of sluice and sluice-load, and rsyslog and syslog-ng with their modules and every
# library `ldd` lists apart from glibc's own (the machine's glibc is newer and runs them).
#
#   benches/device_pack.sh                 # -> target/device (well under the 64 MiB a run carries)
#   DEST=/tmp/pack benches/device_pack.sh
#
# Then, on the machine: `benches/device_run.sh target/device` (it writes its results under $OUT).
# Needs: cargo, strip, rsyslog installed here, syslog-ng unpacked by benches/compare.sh (or
# ./test.sh) in ~/.cache/sluice-test-tools/syslog-ng; either peer missing is left out.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${DEST:-$ROOT/target/device}
SYSLOG_NG_DIR=${SYSLOG_NG_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-test-tools/syslog-ng}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

(cd "$ROOT" && cargo build --release --quiet -p sluice -p sluice-load)
rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/lib"
for b in sluice sluice-load; do
    cp "$TARGET/release/$b" "$DEST/bin/$b"
    strip "$DEST/bin/$b"
done

# Copies the libraries FILE needs (not glibc's: libc, libm, libpthread, libdl, librt,
# libresolv, the loader) into DIR, and those they need in turn (ldd lists the whole closure).
copy_libs() {
    local file=$1 dir=$2 lib
    for lib in $(ldd "$file" 2> /dev/null | awk '$3 ~ /^\// {print $3}'); do
        case $(basename "$lib") in
            libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libresolv.so.* | ld-linux*) ;;
            *) cp -nL "$lib" "$dir/" ;;
        esac
    done
}

RSYSLOGD=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)
if [ -x "$RSYSLOGD" ]; then
    modules=$(dirname "$(dpkg -L rsyslog 2> /dev/null | grep -m1 '/imtcp.so$' || echo /usr/lib/x86_64-linux-gnu/rsyslog/imtcp.so)")
    mkdir -p "$DEST/rsyslog/modules"
    cp -L "$RSYSLOGD" "$DEST/rsyslog/rsyslogd"
    copy_libs "$RSYSLOGD" "$DEST/lib"
    # imtcp and what it loads (the TCP server, network streams, plain TCP driver).
    for m in imtcp lmnet lmnetstrms lmnsd_ptcp lmtcpsrv; do
        cp -L "$modules/$m.so" "$DEST/rsyslog/modules/"
        copy_libs "$modules/$m.so" "$DEST/lib"
    done
    # compare.sh starts "$RSYSLOGD" -n -f CONF -i PIDFILE: the same words reach the copy.
    cat > "$DEST/bin/rsyslogd" <<'EOF'
#!/usr/bin/env bash
D=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$D/lib" exec "$D/rsyslog/rsyslogd" -M "$D/rsyslog/modules" "$@"
EOF
    chmod +x "$DEST/bin/rsyslogd"
else
    echo "rsyslog is not installed here: left out" >&2
fi

if [ -x "$SYSLOG_NG_DIR/usr/sbin/syslog-ng" ]; then
    # The layout compare.sh expects (SYSLOG_NG_DIR/usr/...), with the libraries it needs
    # beside its own in usr/lib/syslog-ng (compare.sh's LD_LIBRARY_PATH).
    mkdir -p "$DEST/syslog-ng/usr/sbin" "$DEST/syslog-ng/usr/lib"
    cp -L "$SYSLOG_NG_DIR/usr/sbin/syslog-ng" "$DEST/syslog-ng/usr/sbin/"
    cp -a "$SYSLOG_NG_DIR/usr/lib/syslog-ng" "$DEST/syslog-ng/usr/lib/"
    ngl=$DEST/syslog-ng/usr/lib/syslog-ng
    for f in "$SYSLOG_NG_DIR/usr/sbin/syslog-ng" "$ngl"/*.so* "$ngl"/3.38/*.so; do
        LD_LIBRARY_PATH="$SYSLOG_NG_DIR/usr/lib/syslog-ng" copy_libs "$f" "$ngl"
    done
else
    echo "syslog-ng is not unpacked in $SYSLOG_NG_DIR: left out" >&2
fi

du -sh "$DEST"
