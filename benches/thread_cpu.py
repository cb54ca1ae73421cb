#!/usr/bin/env python3
"""CPU per thread of running processes over a few seconds, from /proc/PID/task/*/stat.

    python3 benches/thread_cpu.py [--secs 4] PID [PID ...]

Prints, per process, its total in cores and each thread's share (name/tid: cores), busiest
first. Use it mid-run to see whether one thread is saturated (a core's worth) or the machine
is: e.g. the server and sluice-load of a `sluice-load --server ...` run:

    python3 benches/thread_cpu.py $(pgrep -f 'sluice serve') $(pgrep -x sluice-load)
"""
import argparse
import os
import time


def snap(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))  # utime + stime
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=4.0)
    ap.add_argument("pids", nargs="+")
    args = ap.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    before = {p: snap(p) for p in args.pids}
    start = time.time()
    time.sleep(args.secs)
    after = {p: snap(p) for p in args.pids}
    elapsed = time.time() - start
    for p in args.pids:
        cores = {}
        for tid, (name, ticks) in after[p].items():
            if tid in before[p]:
                cores[f"{name}/{tid}"] = (ticks - before[p][tid][1]) / hz / elapsed
        busy = sorted(((c, t) for t, c in cores.items() if c > 0.01), reverse=True)
        comm = open(f"/proc/{p}/comm").read().strip()
        shown = ", ".join(f"{t}: {c:.2f}" for c, t in busy)
        print(f"{p} {comm} total {sum(cores.values()):.2f} cores: {shown}")


if __name__ == "__main__":
    main()
