"""Drives a terminal client in a pty: throughput and echo latency.

Used by bench/console.sh and bench/tls.sh. Its argument is JSON: either
{"argv": [...], "mb": M, "keys": K} (one run of that client), or
{"fcm": [...], "ssh": [...], "rounds": R, "mb": M, "keys": K} (R rounds of
both, alternating). Prints the results as JSON.
"""
import json, os, pty, select, signal, statistics, struct, sys, fcntl, termios, time

def spawn(argv, env):
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    return pid, fd

def read_until(fd, marker, timeout):
    """Reads until `marker` is seen; returns the byte count read."""
    buf, total, end = b"", 0, time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.5)
        if not r:
            continue
        try:
            c = os.read(fd, 1 << 16)
        except OSError:
            break
        if not c:
            break
        total += len(c)
        buf = (buf + c)[-4096:]
        if marker in buf:
            return total
    raise SystemExit("timed out waiting for %r; last output: %r" % (marker, buf[-300:]))

def drain(fd, quiet=0.3):
    while select.select([fd], [], [], quiet)[0]:
        try:
            if not os.read(fd, 1 << 16):
                return
        except OSError:
            return

def run(argv, mb, keys):
    env = dict(os.environ, TERM="xterm-256color")
    pid, fd = spawn(argv, env)
    res = {}
    try:
        os.write(fd, b"echo ready-$((40+2))\r")
        read_until(fd, b"ready-42", 120)
        drain(fd)
        # Throughput: the guest prints `mb` MiB of base64 into the session.
        tag = b"%d" % (mb * 7)
        os.write(fd, b"clear; head -c %dM /dev/zero | base64; echo $((%d*7))-done\r" % (mb, mb))
        t = time.perf_counter()
        read_until(fd, tag + b"-done", 1800)
        res["throughput_s"] = time.perf_counter() - t
        drain(fd)
        os.write(fd, b"clear\r")
        drain(fd, 0.5)
        # Echo latency: one key at a time, time until it is drawn back.
        lat = []
        letters = b"abcdefghijklmnopqrstuvwxyz"
        for i in range(keys):
            k = letters[i % 26:i % 26 + 1]
            t = time.perf_counter()
            os.write(fd, k)
            read_until(fd, k, 10)
            lat.append((time.perf_counter() - t) * 1000)
            drain(fd, 0.05)
            if i % 26 == 25:
                os.write(fd, b"\x15")  # Ctrl-U
                drain(fd, 0.3)
        os.write(fd, b"\x15")
        drain(fd)
        lat.sort()
        res["echo_ms_p50"] = statistics.median(lat)
        res["echo_ms_p95"] = lat[int(len(lat) * 0.95) - 1]
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    return res

cfg = json.loads(sys.argv[1])
if "argv" in cfg:
    print(json.dumps(run(cfg["argv"], cfg["mb"], cfg["keys"])))
else:
    out = {"fcm": [], "ssh": []}
    for _ in range(cfg["rounds"]):
        for kind in ("fcm", "ssh"):
            out[kind].append(run(cfg[kind], cfg["mb"], cfg["keys"]))
            time.sleep(1)
    print(json.dumps(out))
