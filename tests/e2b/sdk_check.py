"""The E2B Python SDK's own documented usage, run unchanged against fcm
(tests/e2b.rs runs it with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY
pointing at the daemon). Prints `OK <check>` per check, `SANDBOX <id>`
for the test to look at; any failure raises (a non-zero exit).

Usage: sdk_check.py main RUN_ID | sdk_check.py kill SANDBOX_ID |
       sdk_check.py old RUN_ID (with an SDK before 2.51) |
       sdk_check.py short MODE (create, run, a file, kill: for E2B_DOMAIN
       through Caddy, or the daemon's own TLS)
"""

import os
import sys
import time
import urllib.error
import urllib.request

from e2b import CommandExitException, FilesystemEventType, PtySize, Sandbox, SandboxQuery, SandboxState


def ok(name):
    print("OK", name, flush=True)


def status_of(url, headers):
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main(run):
    sbx = Sandbox.create(metadata={"suite": "fcm-e2b", "run": run}, timeout=600)
    print("SANDBOX", sbx.sandbox_id, flush=True)

    r = sbx.commands.run("echo hi")
    assert r.stdout == "hi\n", r
    assert r.exit_code == 0, r
    ok("run")

    try:
        sbx.commands.run("echo out; echo err >&2; exit 3")
        raise AssertionError("a failing command did not raise")
    except CommandExitException as e:
        assert e.exit_code == 3, e
        assert e.stdout == "out\n" and e.stderr == "err\n", (e.stdout, e.stderr)
    ok("exit-code")

    r = sbx.commands.run('echo "$GREETING"; pwd', envs={"GREETING": "hello e2b"}, cwd="/tmp")
    assert r.stdout == "hello e2b\n/tmp\n", r.stdout
    ok("envs-cwd")

    data = os.urandom(1 << 20)
    sbx.files.write("/root/e2b/blob.bin", data)
    back = sbx.files.read("/root/e2b/blob.bin", format="bytes")
    assert bytes(back) == data, "1 MiB read back differs"
    ok("files-1mib")

    # A background command's output reaches on_stdout while it runs (the
    # sync SDK calls it from wait()).
    seen = []
    h = sbx.commands.run("echo first; sleep 3; echo second", background=True)
    h.wait(on_stdout=lambda line: seen.append((time.monotonic(), line)))
    assert [l.strip() for _, l in seen] == ["first", "second"], seen
    assert seen[1][0] - seen[0][0] > 2, f"output came at the end, not as produced: {seen}"
    ok("background-on-stdout")

    # commands.list() sees a running command, commands.kill() ends it.
    h = sbx.commands.run("sleep 300", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()], sbx.commands.list()
    assert sbx.commands.kill(h.pid) is True
    try:
        h.wait()
        raise AssertionError("a killed command ended well")
    except CommandExitException as e:
        assert e.exit_code != 0
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is False
    ok("list-kill")

    # A command its client left runs on; commands.connect() follows it.
    h = sbx.commands.run("sleep 3; echo later; sleep 1; echo last", background=True)
    h.disconnect()
    assert h.pid in [p.pid for p in sbx.commands.list()]
    r = sbx.commands.connect(h.pid).wait()
    assert r.stdout == "later\nlast\n", r.stdout
    ok("connect")

    # stdin: a command started with it reads what is sent, then an end of file.
    h = sbx.commands.run("cat; echo done", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello stdin\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "hello stdin\ndone\n"
    ok("stdin")

    # A PTY runs what is typed and follows a resize.
    typed = bytearray()
    t = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(t.pid, PtySize(rows=33, cols=101))
    sbx.pty.send_stdin(t.pid, b"echo $((6*7)); stty size; exit\n")
    t.wait(on_pty=lambda data: typed.extend(data))
    shown = typed.decode(errors="replace")
    assert "42\r\n" in shown, shown
    assert "33 101" in shown, shown
    ok("pty")

    sbx.files.write("/root/e2b/a.txt", "hello file")
    names = sorted(e.name for e in sbx.files.list("/root/e2b"))
    assert names == ["a.txt", "blob.bin"], names
    ok("list")

    assert sbx.files.exists("/root/e2b/a.txt")
    assert not sbx.files.exists("/root/e2b/none")
    ok("exists")

    assert sbx.files.make_dir("/root/e2b/sub") is True
    assert sbx.files.make_dir("/root/e2b/sub") is False
    ok("make-dir")

    sbx.files.write_files(
        [
            {"path": "/root/e2b/sub/deep/one.txt", "data": "1"},
            {"path": "/root/e2b/sub/two.txt", "data": b"22"},
        ]
    )
    deep = sorted(e.path for e in sbx.files.list("/root/e2b/sub", depth=2))
    assert deep == [
        "/root/e2b/sub/deep",
        "/root/e2b/sub/deep/one.txt",
        "/root/e2b/sub/two.txt",
    ], deep
    info = sbx.files.get_info("/root/e2b/sub/two.txt")
    assert info.size == 2 and info.type.value == "file", info
    ok("write-files-depth-info")

    # watch_dir (the sync SDK's polling watcher) sees what a command made.
    sbx.files.make_dir("/root/watched")
    w = sbx.files.watch_dir("/root/watched")
    sbx.commands.run("echo x > /root/watched/made.txt")
    evs = [(e.name, e.type) for e in w.get_new_events()]
    assert ("made.txt", FilesystemEventType.CREATE) in evs, evs
    sbx.commands.run("rm /root/watched/made.txt")
    evs = [(e.name, e.type) for e in w.get_new_events()]
    assert evs == [("made.txt", FilesystemEventType.REMOVE)], evs
    w.stop()
    ok("watch-dir")

    sbx.files.rename("/root/e2b/a.txt", "/root/e2b/sub/b.txt")
    assert sbx.files.read("/root/e2b/sub/b.txt") == "hello file"
    assert not sbx.files.exists("/root/e2b/a.txt")
    ok("rename")

    sbx.files.remove("/root/e2b/sub")
    assert not sbx.files.exists("/root/e2b/sub")
    ok("remove")

    found = Sandbox.list(query=SandboxQuery(metadata={"run": run})).next_items()
    assert [s.sandbox_id for s in found] == [sbx.sandbox_id], found
    assert found[0].metadata == {"suite": "fcm-e2b", "run": run}, found[0].metadata
    ok("list-by-metadata")

    metrics = sbx.get_metrics()
    assert len(metrics) == 1, metrics
    m = metrics[0]
    assert m.cpu_count >= 1 and 0 <= m.cpu_used_pct <= 100, m
    assert 100 << 20 < m.mem_total and 0 < m.mem_used < m.mem_total, m
    assert 1 << 30 < m.disk_total and 0 < m.disk_used < m.disk_total, m
    ok("metrics")

    # Paused and connected again, a process of the sandbox lives on.
    pid = sbx.commands.run("nohup sleep 3000 >/dev/null 2>&1 & echo $!").stdout.strip()
    assert sbx.pause() is True
    assert sbx.pause() is False, "pausing a paused sandbox"
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
    paused = Sandbox.list(
        query=SandboxQuery(metadata={"run": run}, state=[SandboxState.PAUSED])
    ).next_items()
    assert [s.sandbox_id for s in paused] == [sbx.sandbox_id], paused
    sbx = Sandbox.connect(sbx.sandbox_id)
    assert sbx.get_info().state == SandboxState.RUNNING
    assert sbx.commands.run(f"cat /proc/{pid}/comm").stdout == "sleep\n"
    ok("pause-connect")

    # fork(count=2): two new sandboxes with the source's processes and files.
    forks = sbx.fork(count=2, timeout=120)
    assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), forks
    ids = {f.sandbox_id for f in forks}
    assert len(ids) == 2 and sbx.sandbox_id not in ids, ids
    for f in forks:
        assert f.commands.run(f"cat /proc/{pid}/comm").stdout == "sleep\n"
        assert f.commands.run("wc -c < /root/e2b/blob.bin").stdout == "1048576\n"
        f.commands.run("echo mine > /root/e2b/who")
        assert f.get_info().metadata == {"suite": "fcm-e2b", "run": run}
    assert not sbx.files.exists("/root/e2b/who"), "a fork wrote into its source"
    assert sbx.commands.run("echo still").stdout == "still\n"
    for f in forks:
        assert f.kill() is True
    ok("fork")

    try:
        Sandbox.list(api_key="not-the-token").next_items()
        raise AssertionError("a wrong key was let in")
    except Exception as e:  # AuthenticationException
        assert type(e).__name__ == "AuthenticationException", repr(e)
    ok("wrong-key")

    try:
        Sandbox.create(template="no-such-template")
        raise AssertionError("an unknown template made a sandbox")
    except Exception as e:
        assert getattr(e, "status_code", None) == 404 or "404" in str(e), repr(e)
    ok("unknown-template")

    assert Sandbox.kill("inosuchsandbox000000") is False
    ok("kill-unknown")

    # A second sandbox: the first one's token does not open it.
    # (No timeout given: 300 s, the SDK documentation's default.)
    other = Sandbox.create(metadata={"run": run + "-other"})
    life = other.get_info()
    assert 290 <= (life.end_at - life.started_at).total_seconds() <= 310, life
    url = os.environ["E2B_SANDBOX_URL"] + "/health"
    base = {"E2b-Sandbox-Port": "49983"}
    mine = {**base, "E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": sbx._envd_access_token}
    theirs = {**base, "E2b-Sandbox-Id": other.sandbox_id, "X-Access-Token": sbx._envd_access_token}
    assert status_of(url, mine) == 204
    assert status_of(url, theirs) == 401, status_of(url, theirs)
    ok("token-of-another")

    # autoPause: at its timeout it is paused, not destroyed; connect resumes it.
    # (Its template named as the fcm image it is: the base image.)
    napper = Sandbox.create("fcm/base", timeout=5, lifecycle={"on_timeout": "pause"})
    assert napper.get_info().template_id == "fcm/base"
    deadline = time.monotonic() + 30
    while Sandbox.get_info(napper.sandbox_id).state != SandboxState.PAUSED:
        assert time.monotonic() < deadline, "an autoPause sandbox was not paused at its timeout"
        time.sleep(1)
    napper = Sandbox.connect(napper.sandbox_id, timeout=60)
    assert napper.commands.run("echo awake").stdout == "awake\n"
    assert napper.kill() is True
    ok("auto-pause")

    # Its timeout set to 5 s: the daemon ends it (the test watches fcm ls).
    other.set_timeout(5)
    print("SHORT", other.sandbox_id, flush=True)
    ok("set-timeout")


def old_sdk(run):
    """An SDK before 2.51 (its v1 paths: POST /sandboxes, POST
    /sandboxes/{id}/connect): the core of it."""
    sbx = Sandbox.create(metadata={"run": run}, timeout=300)
    assert sbx.commands.run("echo hi").stdout == "hi\n"
    try:
        sbx.commands.run("exit 4")
        raise AssertionError("a failing command did not raise")
    except CommandExitException as e:
        assert e.exit_code == 4, e
    data = os.urandom(1 << 20)
    sbx.files.write("/root/old.bin", data)
    assert bytes(sbx.files.read("/root/old.bin", format="bytes")) == data
    found = Sandbox.list(query=SandboxQuery(metadata={"run": run})).next_items()
    assert [s.sandbox_id for s in found] == [sbx.sandbox_id], found
    pid = sbx.commands.run("nohup sleep 3000 >/dev/null 2>&1 & echo $!").stdout.strip()
    assert sbx.pause() is True
    sbx = Sandbox.connect(sbx.sandbox_id)
    assert sbx.commands.run(f"cat /proc/{pid}/comm").stdout == "sleep\n"
    assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False
    ok("old-sdk")


def short(mode):
    """The core over another way in (E2B_DOMAIN through Caddy, or HTTPS to
    the daemon itself): create, run, a file written and read, kill."""
    sbx = Sandbox.create(metadata={"mode": mode}, timeout=300)
    print("SANDBOX", sbx.sandbox_id, flush=True)
    domain = os.environ.get("E2B_DOMAIN")
    if domain:
        # The create answer's domain is where the SDK finds the sandbox.
        assert sbx.sandbox_domain == domain, (sbx.sandbox_domain, domain)
        assert sbx.envd_api_url == f"https://49983-{sbx.sandbox_id}.{domain}", sbx.envd_api_url
        ok("domain")
    r = sbx.commands.run("echo hi")
    assert r.stdout == "hi\n" and r.exit_code == 0, r
    ok("run")
    data = os.urandom(256 << 10)
    sbx.files.write("/root/short.bin", data)
    assert bytes(sbx.files.read("/root/short.bin", format="bytes")) == data
    ok("files")
    assert sbx.kill() is True
    assert Sandbox.kill(sbx.sandbox_id) is False
    ok("kill")


def kill(sandbox_id):
    sbx = Sandbox.connect(sandbox_id)
    assert sbx.commands.run("cat /root/e2b/blob.bin | wc -c").stdout == "1048576\n"
    assert sbx.kill() is True
    assert Sandbox.kill(sandbox_id) is False
    ok("kill")


if __name__ == "__main__":
    {"main": main, "kill": kill, "old": old_sdk, "short": short}[sys.argv[1]](sys.argv[2])
