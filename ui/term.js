// fcm's web console: a terminal per VM (xterm.js + its fit addon) over a
// WebSocket to the daemon's console sessions: the session "main", the
// same one `fcm console` / `fcm attach VM main` use. Binary messages are
// terminal bytes both ways; text messages are JSON control.
"use strict";

(() => {
  const THEMES = {
    dark: { background: "#000000", foreground: "#e6e9ec", cursor: "#e6e9ec", selectionBackground: "#3a4a5c" },
    light: { background: "#ffffff", foreground: "#15191d", cursor: "#15191d", selectionBackground: "#b9d3f0" },
  };
  const open = new Map(); // VM name -> { term, ws, panel, observer }
  const encoder = new TextEncoder();
  let theme = "dark";

  function wsUrl(name, cols, rows) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams({ vm: name, session: "main", create: "1", cols, rows });
    return `${scheme}//${location.host}/ui/ws?${q}`;
  }

  function note(t, text) {
    t.panel.querySelector(".note").textContent = text;
  }

  function connect(t) {
    const { term, name } = t;
    // Browsers cannot set Authorization on a WebSocket: the token goes as
    // a subprotocol, which the daemon checks and never echoes.
    const ws = new WebSocket(wsUrl(name, term.cols, term.rows), ["fcm.v1", `fcm.token.${t.token}`]);
    ws.binaryType = "arraybuffer";
    t.ws = ws;
    note(t, "connecting…");
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        term.write(new Uint8Array(ev.data));
        return;
      }
      let m;
      try { m = JSON.parse(ev.data); } catch (_) { return; }
      if (m.attached) note(t, `session ${m.attached.session}: also reachable with fcm attach ${name} ${m.attached.session}`);
      if (m.error) {
        term.write(`\r\n\x1b[31m${m.error}\x1b[0m\r\n`);
        if (m.hint) term.write(`hint: ${m.hint}\r\n`);
        note(t, "refused");
      }
      if (m.ended) {
        term.write(`\r\n${m.ended}\r\n`);
        note(t, "ended");
      }
    };
    ws.onclose = () => {
      if (t.ws === ws) {
        const n = t.panel.querySelector(".note");
        if (n.textContent !== "ended" && n.textContent !== "refused") n.textContent = "disconnected";
        t.panel.querySelector(".reconnect").hidden = false;
      }
    };
    ws.onopen = () => { t.panel.querySelector(".reconnect").hidden = true; };
  }

  function send(t, data) {
    if (t.ws && t.ws.readyState === WebSocket.OPEN) t.ws.send(data);
  }

  function openTerm(name, token) {
    const had = open.get(name);
    if (had) {
      had.term.focus();
      return had;
    }
    const panel = document.createElement("section");
    panel.className = "term";
    panel.dataset.vm = name;
    const head = document.createElement("header");
    const h = document.createElement("h3");
    h.textContent = `Terminal: ${name}`;
    const n = document.createElement("span");
    n.className = "note";
    const again = document.createElement("button");
    again.type = "button";
    again.className = "reconnect";
    again.textContent = "Reconnect";
    again.hidden = true;
    const x = document.createElement("button");
    x.type = "button";
    x.textContent = "Close";
    x.setAttribute("aria-label", `Close the terminal of ${name}`);
    head.append(h, n, again, x);
    const screen = document.createElement("div");
    screen.className = "screen";
    panel.append(head, screen);
    document.getElementById("terminals").appendChild(panel);

    const term = new window.Terminal({
      cursorBlink: true,
      fontSize: 14,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
      theme: THEMES[theme],
      scrollback: 5000,
    });
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(screen);
    fit.fit();
    const t = { name, token, term, fit, panel, ws: null };
    open.set(name, t);
    term.onData((d) => send(t, encoder.encode(d)));
    term.onBinary((d) => send(t, Uint8Array.from(d, (c) => c.charCodeAt(0))));
    term.onResize(({ cols, rows }) => send(t, JSON.stringify({ resize: { cols, rows } })));
    t.observer = new ResizeObserver(() => { try { fit.fit(); } catch (_) { /* hidden */ } });
    t.observer.observe(screen);
    again.addEventListener("click", () => { connect(t); term.focus(); });
    x.addEventListener("click", () => close(name));
    connect(t);
    term.focus();
    return t;
  }

  function close(name) {
    const t = open.get(name);
    if (!t) return;
    open.delete(name);
    t.observer.disconnect();
    if (t.ws) { const ws = t.ws; t.ws = null; ws.close(); }
    t.term.dispose();
    t.panel.remove();
  }

  window.FcmTerm = {
    open: openTerm,
    close,
    closeAll() { for (const name of [...open.keys()]) close(name); },
    setTheme(name) {
      theme = name in THEMES ? name : "dark";
      for (const t of open.values()) t.term.options.theme = THEMES[theme];
    },
    // For tests and scripts: the terminal of a VM (xterm's API).
    terminal(name) { const t = open.get(name); return t ? t.term : null; },
  };
})();
