import os, subprocess, sys, time, json, urllib.request, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluice_server  # noqa: E402

BIN = sys.argv[1]
GB = float(sys.argv[2])
base = "/tmp/meas/bigread"
logs = f"{base}/logs"
os.makedirs(logs, exist_ok=True)
path = f"{logs}/big-job.jsonl"
pad = "x" * 150
line_len = len('{"ts":"2026-11-22T00:00:00.000Z","stream":"stdout","step":"build","line":"%s 1000000","origin":"APP/0","seq":1000000}\n' % pad)
n = int(GB * 1e9 / line_len)
if not os.path.exists(path) or os.path.getsize(path) < GB * 0.95e9:
    with open(path, "w", buffering=1 << 20) as f:
        for seq in range(1, n + 1):
            f.write('{"ts":"2026-11-22T00:00:00.000Z","stream":"stdout","step":"build","line":"%s %d","origin":"APP/0","seq":%d}\n' % (pad, seq, seq))
size = os.path.getsize(path)
p, addrs = sluice_server.start(BIN, base, logs, syslog_tcp=False)
def hwm():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmHWM:"):
            return int(l.split()[1]) * 1024
before = hwm()
lat = []
done = threading.Event()
def probe():
    while not done.is_set():
        t = time.monotonic()
        urllib.request.urlopen(f"http://{addrs['http']}/healthz").read()
        lat.append(time.monotonic() - t)
        time.sleep(0.02)
th = threading.Thread(target=probe); th.start()
t0 = time.monotonic()
r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{http_code}", f"http://{addrs['http']}/api/jobs/big-job/logs"], capture_output=True, text=True)
took = time.monotonic() - t0
done.set(); th.join()
after = hwm()
p.terminate(); p.wait()
lat.sort()
print(json.dumps({"file_bytes": size, "answer": r.stdout, "read_s": round(took, 2), "MB_per_s": round(size / took / 1e6, 1),
    "peak_rss_growth_MiB": round((after - before) / 2**20, 1), "peak_rss_MiB": round(after / 2**20, 1),
    "healthz_probes": len(lat), "healthz_p50_ms": round(lat[len(lat)//2] * 1000, 2), "healthz_p99_ms": round(lat[int(len(lat)*0.99)] * 1000, 2), "healthz_max_ms": round(lat[-1] * 1000, 2)}))
