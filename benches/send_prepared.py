#!/usr/bin/env python3
"""A syslog sender whose own CPU is negligible: every connection's octet-counted RFC 5424 lines
are prepared in memory first, then written in 1 MiB chunks (the kernel does the copying).

    send_prepared.py PORT LINES SIZE CONNECTIONS

Prints one JSON object: lines sent, seconds from the first byte to the last written, and the
sender's own CPU seconds (user + system) while sending, so a benchmark can report it."""
import json
import resource
import socket
import sys
import threading
import time

port, lines, size, conns = (int(a) for a in sys.argv[1:5])
CHUNK = 1 << 20


def prepare(n, c):
    text = b"x" * size
    out = bytearray()
    for i in range(n):
        line = b"<14>1 2026-12-07T10:04:05.360Z bench app%d 1 - - %s" % (c, text)
        out += b"%d %s" % (len(line), line)
    return bytes(out)


per = [lines // conns + (1 if c < lines % conns else 0) for c in range(conns)]
buffers = [prepare(n, c) for c, n in enumerate(per)]
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]


def send(sock, data):
    view = memoryview(data)
    for off in range(0, len(view), CHUNK):
        sock.sendall(view[off:off + CHUNK])
    sock.shutdown(socket.SHUT_WR)


before = resource.getrusage(resource.RUSAGE_SELF)
start = time.monotonic()
threads = [threading.Thread(target=send, args=(s, b)) for s, b in zip(socks, buffers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.monotonic() - start
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({"lines": lines, "send_seconds": elapsed, "sender_cpu_seconds": cpu,
                  "bytes": sum(len(b) for b in buffers), "start": start}))
for s in socks:
    s.close()
