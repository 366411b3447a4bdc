// Shared by the web console's browser scripts (tests/ui.rs, bench/ui.sh):
// Playwright (playwright-core, installed by scripts/test.sh) driving
// Debian's Chromium, headless, with the flags a closed network needs.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const tools = process.env.FCM_UI_JS || "/var/lib/fcm-test-tools/ui-js";
const require = createRequire(path.join(tools, "node_modules", "playwright-core", "package.json"));
export const { chromium } = require("playwright-core");

export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

export async function launch() {
  const dir = fs.mkdtempSync("/tmp/fcm-ui-chromium-");
  const browser = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 860 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const close = async () => {
    await browser.close().catch(() => {});
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { browser, close };
}

// The text of a VM's terminal as a person sees it: xterm's DOM rows.
export async function screenText(page, vm) {
  return page.locator(`.term[data-vm="${vm}"] .xterm-rows`).innerText();
}

export async function waitScreen(page, vm, re, ms = 30000) {
  const deadline = Date.now() + ms;
  let last = "";
  while (Date.now() < deadline) {
    last = await screenText(page, vm);
    if (re.test(last)) return last;
    await page.waitForTimeout(100);
  }
  throw new Error(`terminal of ${vm}: ${re} not seen within ${ms} ms; screen:\n${last}`);
}

export async function typeLine(page, line) {
  await page.keyboard.type(line, { delay: 5 });
  await page.keyboard.press("Enter");
}

// Tells the Rust side to do something (a line on stdout) and waits for its
// acknowledgement (a file it writes).
let steps = 0;
export async function step(what, ms = 120000) {
  const n = ++steps;
  const ack = path.join(env("FCM_UI_SYNC"), `ack-${n}`);
  console.log(`STEP ${n} ${what}`);
  const deadline = Date.now() + ms;
  while (!fs.existsSync(ack)) {
    if (Date.now() > deadline) throw new Error(`no acknowledgement of step ${n} (${what})`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const said = fs.readFileSync(ack, "utf8").trim();
  if (said !== "ok") throw new Error(`step ${n} (${what}) failed: ${said}`);
}
