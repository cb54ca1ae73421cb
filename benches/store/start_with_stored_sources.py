import os, socket, subprocess, sys, time, json, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sluice_server  # noqa: E402

BIN = sys.argv[1]
N = int(sys.argv[2])
stored = sys.argv[3] == "stored"
base = f"/tmp/meas/start-{'stored' if stored else 'empty'}"
subprocess.run(["rm", "-rf", base])
logs = f"{base}/logs"
os.makedirs(logs)
if stored:
    for i in range(N):
        with open(f"{logs}/s-{i}.jsonl", "w") as f:
            for seq in range(1, 4):
                f.write('{"ts":"2026-11-22T00:00:00.000Z","stream":"stdout","line":"old %d","origin":"APP/0","seq":%d}\n' % (seq, seq))
t0 = time.monotonic()
p, addrs = sluice_server.start(BIN, base, logs)
ready = time.monotonic() - t0
host, port = addrs["syslog_tcp"].rsplit(":", 1)
payload = bytearray()
for i in range(N):
    msg = f"<14>1 - h s-{i} [APP/0] - - new line".encode()
    payload += str(len(msg)).encode() + b" " + msg
def metric(name):
    text = urllib.request.urlopen(f"http://{addrs['http']}/metrics").read().decode()
    for l in text.splitlines():
        if l.startswith(name + " "):
            return int(float(l.split()[1]))
    return 0
t1 = time.monotonic()
s = socket.create_connection((host, int(port)))
s.sendall(payload)
s.close()
while metric("sluice_syslog_messages_total") < N:
    time.sleep(0.01)
first = time.monotonic() - t1
# a sample: seq continues
stats = json.loads(urllib.request.urlopen(f"http://{addrs['http']}/api/v1/sources/s-{N-1}/stats").read())
p.terminate(); p.wait()
print(json.dumps({"stored": stored, "sources": N, "start_to_ready_s": round(ready, 3), "first_line_to_every_source_s": round(first, 3), "sample_published": stats["published"]}))
