// The web console as a person uses it, against a real daemon and guest
// (run by tests/ui.rs inside the test's network namespace). FCM_UI_MODE:
// "full" (everything) or "tls" (log in and read 42 over https/wss).
import fs from "node:fs";
import path from "node:path";
import { launch, env, waitScreen, typeLine, step, screenText } from "./lib.mjs";

const url = env("FCM_UI_URL");
const token = env("FCM_TOKEN");
const vm = env("FCM_VM");
const mode = process.env.FCM_UI_MODE || "full";
const shots = env("FCM_UI_ARTIFACTS");
fs.mkdirSync(shots, { recursive: true });

const { browser, close } = await launch();
const page = browser.pages()[0] || (await browser.newPage());
const requests = [];
page.on("request", (r) => requests.push(r.url()));
page.on("websocket", (w) => requests.push(w.url()));
const consoleErrors = [];
// An API error answer (the wrong token's 401, /stats before it exists)
// is logged by Chromium as a failed load: that is not a page error.
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
});
page.on("pageerror", (e) => consoleErrors.push(String(e)));

const shot = async (name) => {
  const file = path.join(shots, `${mode}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
};
const row = (name) => page.locator(`tr[data-vm="${name}"]`);
const check = (ok, what) => { if (!ok) throw new Error(what); };

async function confirmDialog(okText, typed) {
  const d = page.locator("#confirm");
  await d.waitFor({ state: "visible" });
  if (typed !== undefined) await page.locator("#confirm-input").fill(typed);
  await page.locator("#confirm-ok").click();
  await d.waitFor({ state: "hidden" });
}

try {
  await page.emulateMedia({ colorScheme: "dark" });
  await page.goto(url);
  await page.locator("#login-form").waitFor();
  await shot("login");

  // A wrong token: refused, said so, nothing stored.
  await page.fill("#token", "x".repeat(32));
  await page.click("#login-form button[type=submit]");
  await page.locator("#login-error", { hasText: "Wrong token" }).waitFor();
  check((await page.evaluate(() => sessionStorage.length)) === 0, "a wrong token was stored");
  check(await page.locator("#vms").isHidden(), "the list shows after a wrong token");
  await shot("login-wrong-token");

  // The right token: the VM listed with its state and IP.
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await row(vm).locator(".state", { hasText: "running" }).waitFor({ timeout: 20000 });
  const ip = (await row(vm).locator('td[data-label="IP"]').innerText()).trim();
  check(ip === env("FCM_VM_IP"), `IP shown ${ip}, expected ${process.env.FCM_VM_IP}`);
  check((await page.evaluate(() => sessionStorage.getItem("fcm.token"))) === token, "token not kept in sessionStorage");
  check((await page.evaluate(() => localStorage.getItem("fcm.token"))) === null, "token in localStorage");
  // CPU and memory from GET /stats, each with its sparkline.
  await row(vm).locator('td[data-label="CPU"]', { hasText: "%" }).waitFor({ timeout: 20000 });
  await row(vm).locator('td[data-label="Memory"]', { hasText: /[KMG]iB/ }).waitFor({ timeout: 20000 });
  await row(vm).locator('td[data-label="CPU"] svg.spark polyline').waitFor({ timeout: 20000 });
  await shot("list");

  // Its terminal: 42 back from the guest.
  await row(vm).getByRole("button", { name: "Terminal" }).click();
  await page.locator(`.term[data-vm="${vm}"] .xterm-rows`).waitFor();
  await waitScreen(page, vm, /\[main\]|root@|#\s*$/m, 60000);
  await page.locator(`.term[data-vm="${vm}"] .xterm-helper-textarea`).focus();
  await typeLine(page, "echo $((6*7))");
  await waitScreen(page, vm, /^42(\s|$)/m, 30000);
  await shot("terminal");
  console.log("SEEN 42");

  if (mode === "full") {
    // Resize the window: stty size in the guest follows xterm's size
    // (tmux keeps one row for its status line).
    for (const [w, h] of [[900, 700], [1280, 980]]) {
      await page.setViewportSize({ width: w, height: h });
      await page.waitForTimeout(500);
      const size = await page.evaluate((n) => {
        const t = window.FcmTerm.terminal(n);
        return { cols: t.cols, rows: t.rows };
      }, vm);
      const want = `${size.rows - 1} ${size.cols}`;
      const deadline = Date.now() + 20000;
      let seen = false;
      while (!seen && Date.now() < deadline) {
        await typeLine(page, "clear; echo size=$(stty size)");
        await page.waitForTimeout(700);
        seen = (await screenText(page, vm)).includes(`size=${want}`);
      }
      check(seen, `stty size never said ${want} after resizing to ${w}x${h}:\n${await screenText(page, vm)}`);
      console.log(`SEEN size=${want} at ${w}x${h}`);
    }

    // The same session from the CLI: it sees the browser's output, and
    // what it types shows here.
    await typeLine(page, "echo from-browser-$((3*5))");
    await waitScreen(page, vm, /^from-browser-15(\s|$)/m);
    await step("cli-attach");
    await waitScreen(page, vm, /^from-cli-20(\s|$)/m, 60000);
    console.log("SEEN from-cli-20");

    // Light theme, a phone.
    await page.click("#theme");
    check((await page.evaluate(() => document.documentElement.dataset.theme)) === "light", "no light theme");
    await shot("list-light");
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    await shot("phone-light");
    await page.click("#theme");
    await shot("phone-dark");
    await page.setViewportSize({ width: 1280, height: 860 });

    // Create a VM from the page; it appears, and `fcm ls` has it.
    const made = "ui-made";
    await page.click("#new-vm");
    await page.locator("#create").waitFor({ state: "visible" });
    await page.fill("#create-name", made);
    await shot("dialog-create");
    await page.click("#create-ok");
    await row(made).waitFor({ timeout: 120000 });
    await row(made).locator(".state", { hasText: "running" }).waitFor({ timeout: 120000 });
    await step(`created ${made}`);

    // Destroy it: the dialog wants its name typed.
    await row(made).getByRole("button", { name: "Destroy" }).click();
    await page.locator("#confirm").waitFor({ state: "visible" });
    check(await page.locator("#confirm-ok").isDisabled(), "destroy confirmable without the name");
    await page.fill("#confirm-input", made);
    await shot("dialog-destroy");
    await page.locator("#confirm-ok").click();
    await row(made).waitFor({ state: "detached", timeout: 120000 });
    await step(`destroyed ${made}`);

    // Stop the first VM: its state follows and the terminal says it ended.
    // Esc closes the dialog and nothing happens; then, confirmed, it stops.
    await row(vm).getByRole("button", { name: "Stop" }).click();
    await page.locator("#confirm").waitFor({ state: "visible" });
    await shot("dialog-stop");
    await page.keyboard.press("Escape");
    await page.locator("#confirm").waitFor({ state: "hidden" });
    await page.waitForTimeout(2500);
    check((await row(vm).locator(".state").innerText()).trim() === "running", "Esc on the dialog stopped the VM");
    await row(vm).getByRole("button", { name: "Stop" }).click();
    await confirmDialog("stop");
    await row(vm).locator(".state", { hasText: "stopped" }).waitFor({ timeout: 120000 });
    await waitScreen(page, vm, /is stopping; its sessions have ended/, 30000);
    await shot("stopped");
    await step(`stopped ${vm}`);

    // Log out: the token leaves the tab.
    await page.click("#logout");
    check((await page.evaluate(() => sessionStorage.getItem("fcm.token"))) === null, "token kept after logout");
  }

  if (mode === "tls") {
    check(requests.some((u) => u.startsWith("wss://")), `no wss: WebSocket in ${requests.join(" ")}`);
    console.log("SEEN wss");
  }
  const leaked = requests.filter((u) => u.includes(token));
  check(leaked.length === 0, `the token is in request URLs: ${leaked.join(" ")}`);
  console.log(`REQUESTS ${requests.length}, none with the token`);
  check(consoleErrors.length === 0, `errors in the page: ${consoleErrors.join(" | ")}`);
  console.log("OK");
} catch (e) {
  await shot("failure").catch(() => {});
  console.log(`FAIL ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await close();
}
