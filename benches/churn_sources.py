"""Sources that come and go: starts `sluice serve` with `router.forget_idle_secs` set, sends
20 new sources a line each every 50 ms over HTTP for DURATION seconds, and prints every 10 s how
many were made, refused, held and forgotten, and the server's resident memory.

    python3 benches/churn_sources.py target/release/sluice 150 1    # forget_idle_secs: 1
    python3 benches/churn_sources.py target/release/sluice 40 0     # never forgotten
"""
import json, os, subprocess, sys, time, urllib.request, socket
root = "/tmp/sluice-churn"
subprocess.run(["rm", "-rf", root]); os.makedirs(root)
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
http, ingest = port(), port()
open(f"{root}/sluice.yaml", "w").write(f"listen:\n  http: 127.0.0.1:{http}\n  ingest: 127.0.0.1:{ingest}\n  syslog_tcp: null\n  syslog_udp: null\nrouter:\n  max_sources: 100000\n  forget_idle_secs: {sys.argv[3]}\nlog_storage:\n  local_dir: {root}/logs\n")
srv = subprocess.Popen([sys.argv[1], "serve", "--config", f"{root}/sluice.yaml"], stdout=subprocess.PIPE, stderr=open(f"{root}/err", "w"), env={**os.environ, "SLUICE_LOG": "warn"})
for line in srv.stdout:
    if line.strip() == b"ready": break
base = f"http://127.0.0.1:{http}"
def metric(name):
    for l in urllib.request.urlopen(base + "/metrics").read().decode().splitlines():
        if l.startswith(name + " "): return float(l.split()[1])
def rss():
    for l in open(f"/proc/{srv.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
refused = 0; sent = 0; n = 0
start = time.time(); last = start
while time.time() - start < float(sys.argv[2]):
    body = "".join(json.dumps({"source_id": f"job-{n + i}", "message": f"line of job {n + i}"}) + "\n" for i in range(20))
    n += 20
    req = urllib.request.Request(base + "/api/v1/ingest", data=body.encode(), method="POST")
    try:
        urllib.request.urlopen(req); sent += 20
    except urllib.error.HTTPError as e:
        refused += 20
    time.sleep(0.05)
    if time.time() - last > 10:
        last = time.time()
        print(f"t={int(last-start)}s made={n} sent={sent} refused={refused} held={metric('sluice_router_sources')} forgotten={metric('sluice_router_sources_forgotten_total')} rss={rss()}MiB", flush=True)
time.sleep(3)
print(f"end made={n} sent={sent} refused={refused} held={metric('sluice_router_sources')} forgotten={metric('sluice_router_sources_forgotten_total')} rss={rss()}MiB files={len(os.listdir(root + '/logs'))}")
srv.terminate(); srv.wait()
print(open(f"{root}/err").read()[-2000:])
