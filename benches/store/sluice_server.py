"""Starts `sluice serve` on 127.0.0.1:0 ports with logs in a given directory (shared by the
store benchmarks in this folder)."""
import subprocess


def start(binary, base, logs, syslog_tcp=True):
    """Returns (process, addresses) once the server printed `ready`."""
    tcp = "127.0.0.1:0" if syslog_tcp else "null"
    cfg = f"{base}/sluice.yaml"
    with open(cfg, "w") as f:
        f.write(f"listen:\n  http: 127.0.0.1:0\n  ingest: 127.0.0.1:0\n  syslog_tcp: {tcp}\n"
                f"  syslog_udp: null\nlog_storage:\n  local_dir: {logs}\n")
    p = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    addrs = {}
    for line in p.stdout:
        line = line.strip()
        if line == "ready":
            break
        if line.startswith("listening "):
            k, v = line[len("listening "):].split("=", 1)
            addrs[k] = v
    return p, addrs
