// Keystroke echo latency in the web console's terminal (bench/ui.sh):
// Playwright presses one key at a time in the page; the page times, with
// performance.now(), from the key's keydown to the first animation frame
// after xterm.js has parsed the guest's echo of it (and, apart, to the
// parse alone). Prints JSON {"echo_ms": [...], "parsed_ms": [...]}.
import { launch, env, waitScreen, typeLine } from "../tests/ui/lib.mjs";

const url = env("FCM_UI_URL");
const token = env("FCM_TOKEN");
const vm = env("FCM_VM");
const keys = Number(process.env.BENCH_KEYS || 100);

const { browser, close } = await launch();
try {
  const page = browser.pages()[0] || (await browser.newPage());
  await page.goto(url);
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await page.locator(`tr[data-vm="${vm}"]`).getByRole("button", { name: "Terminal" }).click();
  await page.locator(`.term[data-vm="${vm}"] .xterm-rows`).waitFor();
  await page.locator(`.term[data-vm="${vm}"] .xterm-helper-textarea`).focus();
  await typeLine(page, "clear; echo ready-$((40+2))");
  await waitScreen(page, vm, /^ready-42/m, 60000);
  await page.waitForTimeout(500);
  await page.evaluate((name) => {
    const term = window.FcmTerm.terminal(name);
    const s = (window.__echo = { typed: "", t0: 0, waiting: false, lat: [], parsed: [] });
    document.addEventListener("keydown", (e) => {
      if (e.key.length === 1) { s.typed += e.key; s.t0 = performance.now(); s.waiting = true; }
    }, true);
    term.onWriteParsed(() => {
      if (!s.waiting) return;
      const b = term.buffer.active;
      const line = b.getLine(b.baseY + b.cursorY)?.translateToString(true) || "";
      if (line.endsWith(s.typed)) {
        s.waiting = false;
        const t0 = s.t0;
        s.parsed.push(performance.now() - t0);
        requestAnimationFrame(() => s.lat.push(performance.now() - t0));
      }
    });
  }, vm);
  const letters = "abcdefghijklmnopqrstuvwxyz";
  for (let i = 0; i < keys; i++) {
    await page.keyboard.press(letters[i % 26]);
    await page.waitForFunction((n) => window.__echo.lat.length > n, i, { timeout: 10000, polling: 5 });
    await page.waitForTimeout(50);
    if (i % 26 === 25) {
      await page.keyboard.press("Control+U");
      await page.evaluate(() => { window.__echo.typed = ""; });
      await page.waitForTimeout(300);
    }
  }
  await page.keyboard.press("Control+U");
  const r = await page.evaluate(() => ({ echo_ms: window.__echo.lat, parsed_ms: window.__echo.parsed }));
  console.log(JSON.stringify(r));
} finally {
  await close();
}
