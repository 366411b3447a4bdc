"""A flood of unauthenticated connections to the daemon's ports, for
tests/flood.rs and bench/flood.sh. Only to 127.0.0.1 in the caller's
network namespace.

    flood.py PORTS SOURCES PER SECS MAX_OPENS KINDS

PORTS: comma-separated ports of 127.0.0.1; SOURCES: comma-separated local
addresses to connect from; PER: connections per port and source; KINDS:
comma-separated kinds, given to the connections in turn:
  idle      connects and sends nothing
  slow      sends a request one byte every 0.5 s (plain)
  tlsslow   completes a TLS handshake, then sends a request one byte every 0.5 s
  rawslow   sends a TLS record header one byte every 0.5 s (never a whole hello)
  half      sends part of a request, then shuts its write side (half-open)
Each connection the daemon closes is opened again 0.3 s later; at most
MAX_OPENS in all, for SECS seconds. Prints one JSON line when the flood
first holds 90 % of its connections ({"event": "ready"}), and one at the
end with its figures ({"event": "end"}).
"""
import collections, json, resource, select, socket, ssl, sys, time

ports = [int(p) for p in sys.argv[1].split(",")]
sources = sys.argv[2].split(",")
per, secs, max_opens = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
kinds = sys.argv[6].split(",")
want = len(ports) * len(sources) * per
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, want + 1024)), hard))

PREFIX = {7777: b"GET /vms HTTP/1.1\r\nHost: x\r\nX-Slow: ", 7778: b'{"vm":"x","token":"'}
RECORD = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

st = collections.Counter()
live, later, poller = {}, collections.deque(), select.poll()
# Slow senders' next byte, in time order: (when, fd, generation).
due = collections.deque()
gen = 0


def open_slot(slot):
    global gen
    if st["opened"] >= max_opens:
        return
    port, src, kind = slot
    s = socket.socket()
    s.settimeout(2)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
    except OSError:
        st["connect_failed"] += 1
        s.close()
        later.append((time.time() + 0.3, slot))
        return
    s.setblocking(False)
    st["opened"] += 1
    gen += 1
    c = {"s": s, "slot": slot, "sent": 0, "gen": gen, "tls": False}
    if kind == "tlsslow":
        c["s"] = ctx.wrap_socket(s, do_handshake_on_connect=False)
        c["tls"] = True
        handshake(c)
    elif kind == "half":
        try:
            s.send(PREFIX.get(port, b"x")[:5])
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    fd = c["s"].fileno()
    live[fd] = c
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    if kind in ("slow", "rawslow"):
        due.append((time.time() + 0.5, fd, gen))


def handshake(c):
    try:
        c["s"].do_handshake()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return
    except (ssl.SSLError, OSError):
        return
    c["tls"] = "done"
    st["tls_handshakes"] += 1
    due.append((time.time() + 0.5, c["s"].fileno(), c["gen"]))


def cut(fd):
    c = live.pop(fd)
    poller.unregister(fd)
    c["s"].close()
    st["cut"] += 1
    later.append((time.time() + 0.3, c["slot"]))


slots = [(p, src, kinds[i % len(kinds)]) for p in ports for src in sources for i in range(per)]
for sl in slots:
    open_slot(sl)
end = time.time() + secs
ready = False
while time.time() < end:
    st["peak_open"] = max(st["peak_open"], len(live))
    if not ready and len(live) >= 0.9 * want:
        ready = True
        print(json.dumps({"event": "ready", "open": len(live)}), flush=True)
    for fd, ev in poller.poll(50):
        c = live.get(fd)
        if c is None:
            continue
        if c["tls"] is True:
            handshake(c)
            if ev & (select.POLLHUP | select.POLLERR):
                cut(fd)
            continue
        try:
            data = c["s"].recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue
        except OSError:
            data = b""
        if data:
            st["answers"] += 1
            if b"too many unauthenticated" in data:
                st["pushed_out"] += 1
        else:
            cut(fd)
    now = time.time()
    while due and due[0][0] <= now:
        _, fd, g = due.popleft()
        c = live.get(fd)
        if c is None or c["gen"] != g:
            continue
        port, _, kind = c["slot"]
        p = RECORD if kind == "rawslow" else PREFIX.get(port, b"x")
        b = p[c["sent"]:c["sent"] + 1] or b"a"
        try:
            c["s"].send(b)
            c["sent"] += 1
            st["slow_bytes"] += 1
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError:
            cut(fd)
            continue
        due.append((now + 0.5, fd, g))
    while later and later[0][0] <= now:
        _, slot = later.popleft()
        st["reopened"] += 1
        open_slot(slot)
st["open_at_end"] = len(live)
print(json.dumps({"event": "end", **st}), flush=True)
