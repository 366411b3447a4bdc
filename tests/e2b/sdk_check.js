// The E2B JS SDK's documented usage, run unchanged against fcm
// (tests/e2b.rs runs it with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY
// pointing at the daemon, and NODE_PATH at the pinned SDK). Prints
// `OK <check>` per check and `SANDBOX <id>`; any failure exits non-zero.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { Sandbox, CommandExitError } = require("e2b");

const ok = (name) => console.log(`OK ${name}`);

async function main(run) {
  const sbx = await Sandbox.create({ metadata: { suite: "fcm-e2b-js", run }, timeoutMs: 600_000 });
  console.log(`SANDBOX ${sbx.sandboxId}`);

  const r = await sbx.commands.run("echo hi");
  assert.equal(r.stdout, "hi\n");
  assert.equal(r.exitCode, 0);
  ok("run");

  await assert.rejects(sbx.commands.run("echo out; echo err >&2; exit 3"), (e) => {
    assert.ok(e instanceof CommandExitError, String(e));
    assert.equal(e.exitCode, 3);
    assert.equal(e.stderr, "err\n");
    return true;
  });
  ok("exit-code");

  const env = await sbx.commands.run('echo "$GREETING"; pwd', { envs: { GREETING: "hello e2b" }, cwd: "/tmp" });
  assert.equal(env.stdout, "hello e2b\n/tmp\n");
  ok("envs-cwd");

  const lines = [];
  await sbx.commands.run("echo first; sleep 2; echo second", {
    onStdout: (line) => lines.push([Date.now(), line.trim()]),
  });
  assert.deepEqual(lines.map((l) => l[1]), ["first", "second"]);
  assert.ok(lines[1][0] - lines[0][0] > 1500, "output came at the end, not as produced");
  ok("on-stdout");

  const data = crypto.randomBytes(1 << 20);
  await sbx.files.write("/root/js/blob.bin", data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
  const back = Buffer.from(await sbx.files.read("/root/js/blob.bin", { format: "bytes" }));
  assert.ok(back.equals(data), "1 MiB read back differs");
  ok("files-1mib");

  await sbx.files.write("/root/js/a.txt", "hello file");
  const names = (await sbx.files.list("/root/js")).map((e) => e.name).sort();
  assert.deepEqual(names, ["a.txt", "blob.bin"]);
  assert.equal(await sbx.files.exists("/root/js/a.txt"), true);
  assert.equal(await sbx.files.exists("/root/js/none"), false);
  assert.equal(await sbx.files.makeDir("/root/js/sub"), true);
  assert.equal(await sbx.files.makeDir("/root/js/sub"), false);
  await sbx.files.rename("/root/js/a.txt", "/root/js/sub/b.txt");
  assert.equal(await sbx.files.read("/root/js/sub/b.txt"), "hello file");
  await sbx.files.remove("/root/js/sub");
  assert.equal(await sbx.files.exists("/root/js/sub"), false);
  ok("files");

  // watchDir (a stream) sees a file a command made.
  const seen = [];
  await sbx.files.makeDir("/root/jsw");
  const watcher = await sbx.files.watchDir("/root/jsw", (e) => seen.push(e));
  await sbx.commands.run("echo x > /root/jsw/made.txt");
  const until = Date.now() + 15_000;
  while (!seen.some((e) => e.name === "made.txt" && e.type === "create")) {
    assert.ok(Date.now() < until, `no create event: ${JSON.stringify(seen)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  await watcher.stop();
  ok("watch-dir");

  const found = await Sandbox.list({ query: { metadata: { run } } }).nextItems();
  assert.deepEqual(found.map((s) => s.sandboxId), [sbx.sandboxId]);
  ok("list-by-metadata");

  assert.equal(await sbx.kill(), true);
  assert.equal(await Sandbox.kill(sbx.sandboxId), false);
  ok("kill");
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
