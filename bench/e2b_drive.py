"""The E2B SDK's side of bench/e2b.sh (run with E2B_API_URL, E2B_SANDBOX_URL
and E2B_API_KEY pointing at the daemon). Prints one JSON object.

  e2b_drive.py create        Sandbox.create() to its first commands.run("true") answered
  e2b_drive.py runs N MIB    N x commands.run("true") in one sandbox, then a write
                             and a read of MIB MiB of random bytes
"""

import json
import os
import sys
import time

from e2b import Sandbox


def ms(t0):
    return round((time.monotonic() - t0) * 1000, 1)


def create():
    t0 = time.monotonic()
    sbx = Sandbox.create()
    sbx.commands.run("true")
    took = ms(t0)
    sbx.kill()
    print(json.dumps({"create_to_first_run_ms": took}))


def runs(n, mib):
    sbx = Sandbox.create()
    sbx.commands.run("true")
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        sbx.commands.run("true")
        times.append(ms(t0))
    data = os.urandom(mib << 20)
    t0 = time.monotonic()
    sbx.files.write("/root/bench.bin", data)
    write_ms = ms(t0)
    t0 = time.monotonic()
    back = sbx.files.read("/root/bench.bin", format="bytes")
    read_ms = ms(t0)
    assert bytes(back) == data, "the file read back differs"
    sbx.kill()
    print(json.dumps({"run_ms": times, "write_ms": write_ms, "read_ms": read_ms}))


if __name__ == "__main__":
    if sys.argv[1] == "create":
        create()
    else:
        runs(int(sys.argv[2]), int(sys.argv[3]))
