// fcm's web console: the login, the VM list (live, every 2 s), the
// actions with their confirmations, the theme. No framework; every text
// from the daemon goes in through textContent, never as HTML.
"use strict";

const TOKEN_KEY = "fcm.token";
const THEME_KEY = "fcm.theme";
const REFRESH_MS = 2000;
const SAMPLES = 60;

const $ = (id) => document.getElementById(id);
const state = { timer: null, rows: new Map(), history: new Map(), statsMissing: false };

// --- the API ---------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, body) {
    const msg = (body && body.error) || `HTTP ${status}`;
    super(body && body.hint ? `${msg}\nhint: ${body.hint}` : msg);
    this.status = status;
  }
}

// A request to the daemon with the token as a bearer (never in the URL).
async function api(method, path, body, tok) {
  const headers = { Authorization: `Bearer ${tok || token()}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    if (r.status === 401 && !tok) logout("The token was refused: log in again.");
    throw new ApiError(r.status, data);
  }
  return data;
}

const vmPath = (name) => `/vms/${encodeURIComponent(name)}`;

// --- theme -----------------------------------------------------------------

function currentTheme() {
  const t = document.documentElement.dataset.theme;
  if (t) return t;
  return matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark";
}

function applyTheme(t) {
  if (t) document.documentElement.dataset.theme = t;
  const now = currentTheme();
  $("theme").textContent = now === "dark" ? "Light theme" : "Dark theme";
  if (window.FcmTerm) window.FcmTerm.setTheme(now);
}

$("theme").addEventListener("click", () => {
  const t = currentTheme() === "dark" ? "light" : "dark";
  localStorage.setItem(THEME_KEY, t);
  applyTheme(t);
});
matchMedia("(prefers-color-scheme: light)").addEventListener("change", () => applyTheme());

// --- login -----------------------------------------------------------------

function show(view) {
  $("login").hidden = view !== "login";
  $("vms").hidden = view !== "vms";
  $("terminals").hidden = view !== "vms";
  $("logout").hidden = view !== "vms";
  $("new-vm").hidden = view !== "vms";
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const tok = $("token").value.trim();
  $("login-error").textContent = "";
  try {
    await api("GET", "/vms", undefined, tok);
  } catch (e) {
    $("login-error").textContent = e.status === 401
      ? "Wrong token: the daemon refused it. Nothing was stored."
      : `Could not reach the daemon: ${e.message}`;
    $("token").select();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, tok);
  $("token").value = "";
  start();
});

function logout(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(state.timer);
  state.timer = null;
  if (window.FcmTerm) window.FcmTerm.closeAll();
  $("vm-rows").replaceChildren();
  state.rows.clear();
  show("login");
  $("login-error").textContent = why || "";
  $("token").focus();
}
$("logout").addEventListener("click", () => logout("Logged out."));

function start() {
  show("vms");
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
}

// --- the list --------------------------------------------------------------

function showError(e) {
  const p = $("error");
  p.hidden = !e;
  p.textContent = e ? e.message || String(e) : "";
}

function status(text) {
  $("status").textContent = text;
}

async function refresh() {
  let vms;
  try {
    vms = await api("GET", "/vms");
  } catch (e) {
    if (token()) status(`Not updated: ${e.message}`);
    return;
  }
  let stats = [];
  if (!state.statsMissing) {
    try {
      const s = await api("GET", "/stats");
      stats = Array.isArray(s) ? s : (s && s.vms) || [];
    } catch (e) {
      if (e.status === 404) state.statsMissing = true;
    }
  }
  render(Array.isArray(vms) ? vms : (vms && vms.vms) || [], stats);
  status(`Updated ${new Date().toLocaleTimeString()}`);
}

function fmtBytes(n) {
  if (typeof n !== "number") return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${u[i]}`;
}

function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

// A small inline SVG line of the last samples.
function sparkline(values) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 60 18");
  svg.setAttribute("aria-hidden", "true");
  const vals = values.filter((v) => v !== null);
  if (vals.length > 1) {
    const max = Math.max(...vals, 1e-9);
    const pts = values.map((v, i) => v === null ? null :
      `${(i * 60 / (SAMPLES - 1)).toFixed(1)},${(17 - (v / max) * 16).toFixed(1)}`).filter(Boolean);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function record(name, cpu, mem) {
  let h = state.history.get(name);
  if (!h) { h = { cpu: [], mem: [] }; state.history.set(name, h); }
  h.cpu.push(cpu); h.mem.push(mem);
  if (h.cpu.length > SAMPLES) { h.cpu.shift(); h.mem.shift(); }
  return h;
}

function cell(label, cls) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (cls) td.className = cls;
  return td;
}

function button(text, onClick, cls) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

function safeUrl(u) {
  try {
    const x = new URL(u);
    return x.protocol === "https:" || x.protocol === "http:" ? x.href : null;
  } catch (_) { return null; }
}

function render(vms, stats) {
  const byName = new Map(stats.map((s) => [s.name, s]));
  const tbody = $("vm-rows");
  const seen = new Set();
  for (const vm of vms) {
    seen.add(vm.name);
    let row = state.rows.get(vm.name);
    if (!row) {
      row = makeRow(vm.name);
      state.rows.set(vm.name, row);
    }
    tbody.appendChild(row.tr); // keeps the daemon's order
    const s = byName.get(vm.name);
    const cpu = s && s.cpu ? num(s.cpu.percent) : null;
    const m = s && s.memory;
    const memUsed = m ? num(m.guest && m.guest.used_bytes) ?? num(m.vmm_rss_bytes) : null;
    const h = record(vm.name, cpu, memUsed);
    row.state.textContent = vm.state;
    row.state.className = `state ${vm.state}`;
    row.ip.textContent = vm.ip || "–";
    const url = vm.url && safeUrl(vm.url);
    if (url) {
      if (row.url.firstChild?.href !== url) {
        const a = document.createElement("a");
        a.href = url; a.textContent = vm.url; a.target = "_blank"; a.rel = "noopener noreferrer";
        row.url.replaceChildren(a);
      }
    } else row.url.textContent = "–";
    row.image.textContent = vm.image || "fcm/base";
    row.cpu.replaceChildren(metric(cpu === null ? "–" : `${cpu.toFixed(1)} %`, h.cpu));
    row.mem.replaceChildren(metric(memUsed === null ? "–" : fmtBytes(memUsed), h.mem));
    if (row.shown !== vm.state) {
      row.shown = vm.state;
      row.actions.replaceChildren(...actions(vm));
    }
  }
  for (const [name, row] of state.rows) {
    if (!seen.has(name)) {
      row.tr.remove();
      state.rows.delete(name);
      state.history.delete(name);
    }
  }
  $("empty").hidden = vms.length > 0;
  $("vm-table").hidden = vms.length === 0;
}

function metric(text, values) {
  const span = document.createElement("span");
  span.className = "metric";
  const t = document.createElement("span");
  t.textContent = text;
  span.append(t, sparkline(values));
  return span;
}

function makeRow(name) {
  const tr = document.createElement("tr");
  tr.dataset.vm = name;
  const r = { tr, shown: null };
  const nameCell = cell("Name", "name");
  nameCell.textContent = name;
  const st = cell("State");
  r.state = document.createElement("span");
  st.appendChild(r.state);
  r.ip = cell("IP"); r.url = cell("URL"); r.image = cell("Image");
  r.cpu = cell("CPU"); r.mem = cell("Memory");
  const act = cell("Actions");
  r.actions = document.createElement("div");
  r.actions.className = "actions";
  act.appendChild(r.actions);
  tr.append(nameCell, st, r.ip, r.url, r.image, r.cpu, r.mem, act);
  return r;
}

// --- actions ---------------------------------------------------------------

// A confirmation dialog; with `field`, a text input whose value is
// returned (and, with `mustEqual`, must be typed exactly to confirm).
function ask({ title, text, okText, danger, field }) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  const ok = $("confirm-ok");
  ok.textContent = okText || "OK";
  ok.className = danger ? "danger" : "";
  const input = $("confirm-input");
  $("confirm-field").hidden = !field;
  input.value = "";
  input.oninput = null;
  ok.disabled = false;
  if (field) {
    $("confirm-label").textContent = field.label;
    input.placeholder = field.placeholder || "";
    if (field.mustEqual) {
      ok.disabled = true;
      input.oninput = () => { ok.disabled = input.value !== field.mustEqual; };
    }
  }
  return new Promise((resolve) => {
    d.addEventListener("close", () => {
      resolve(d.returnValue === "ok" ? input.value.trim() : null);
    }, { once: true });
    d.returnValue = "cancel";
    d.showModal();
    (field ? input : ok).focus();
  });
}

async function act(label, fn) {
  showError(null);
  status(`${label}…`);
  try {
    await fn();
    status(`${label}: done`);
  } catch (e) {
    showError(e);
    status(`${label}: failed`);
  }
  refresh();
}

function simple(vm, verb, body, text) {
  return async () => {
    const yes = await ask({ title: `${verb[0].toUpperCase()}${verb.slice(1)} ${vm.name}?`, text, okText: verb });
    if (yes === null) return;
    act(`${verb} ${vm.name}`, () => api("POST", `${vmPath(vm.name)}/${verb}`, body));
  };
}

function actions(vm) {
  const n = vm.name;
  const list = [];
  const running = vm.state === "running";
  if (running) list.push(button("Terminal", () => window.FcmTerm.open(n, token()), "primary"));
  if (running) list.push(button("Stop", simple(vm, "stop", {}, "The guest is shut down cleanly; its disk is kept. Open terminals end.")));
  if (vm.state === "stopped") list.push(button("Start", simple(vm, "start", { wait_ready: false }, "Boots the VM again, with the same name, IP and disk.")));
  if (running) list.push(button("Pause", simple(vm, "pause", {}, "Its memory goes to disk and its VMM stops; resume brings it back as it was.")));
  if (vm.state === "paused") list.push(button("Resume", simple(vm, "resume", { wait_ready: false }, "Back as it was: processes, sessions, IP.")));
  if (running) list.push(button("Checkpoint", async () => {
    const name = await ask({ title: `Checkpoint ${n}?`, text: "Saves its disk and memory; the VM keeps running.",
      okText: "Checkpoint", field: { label: "Checkpoint name (optional)" } });
    if (name === null) return;
    act(`checkpoint ${n}`, () => api("POST", `${vmPath(n)}/checkpoints`, name ? { name } : {}));
  }));
  if (running) list.push(button("Fork", async () => {
    const name = await ask({ title: `Fork ${n}?`, text: "A new VM running on from this one's state, with its own identity.",
      okText: "Fork", field: { label: "Name of the fork (optional)" } });
    if (name === null) return;
    act(`fork ${n}`, () => api("POST", `${vmPath(n)}/fork`, name ? { name } : {}));
  }));
  list.push(button("Destroy", async () => {
    const yes = await ask({ title: `Destroy ${n}?`, text: "The VM, its disk and its checkpoints are deleted. This cannot be undone.",
      okText: "Destroy", danger: true, field: { label: `Type ${n} to confirm`, mustEqual: n } });
    if (yes === null) return;
    window.FcmTerm.close(n);
    act(`destroy ${n}`, () => api("DELETE", vmPath(n)));
  }, "danger"));
  return list;
}

// --- New VM ----------------------------------------------------------------

$("new-vm").addEventListener("click", async () => {
  const sel = $("create-image");
  sel.replaceChildren(new Option("fcm/base (default)", ""));
  try {
    const imgs = await api("GET", "/images");
    for (const i of Array.isArray(imgs) ? imgs : (imgs && imgs.images) || []) {
      if (i.name && i.name !== "fcm/base") sel.appendChild(new Option(i.name, i.name));
    }
  } catch (_) { /* the default image only */ }
  const d = $("create");
  $("create-name").value = "";
  d.returnValue = "cancel";
  d.addEventListener("close", () => {
    if (d.returnValue !== "ok") return;
    const body = { wait_ready: false };
    const name = $("create-name").value.trim();
    if (name) body.name = name;
    if (sel.value) body.image = sel.value;
    act(`create ${name || "a VM"}`, () => api("POST", "/vms", body));
  }, { once: true });
  d.showModal();
  $("create-name").focus();
});

// --- go --------------------------------------------------------------------

applyTheme(localStorage.getItem(THEME_KEY));
if (token()) start(); else show("login");
