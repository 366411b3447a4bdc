"""Renders bench/soak.sh's results: a markdown section on stdout and a small
SVG plot of the daemon's RSS and threads over time (no plotting library).

Reads <tmp>/<side>/report.json (written by tests/soak.rs with FCM_SOAK_REPORT)
and <tmp>/<side>/why.txt (a failed side's own words)."""

import argparse
import json
import os
import re

ap = argparse.ArgumentParser()
ap.add_argument("--tmp", required=True)
ap.add_argument("--sides", required=True)
ap.add_argument("--svg", required=True)
ap.add_argument("--meta", nargs="*", default=[])
a = ap.parse_args()
meta = dict(m.split("=", 1) for m in a.meta)
sides = a.sides.split()
rep = {s: json.load(open(os.path.join(a.tmp, s, "report.json"))) for s in sides}
label = {"base": f"base ({meta.get('base', '?')[:7]})", "new": f"this build ({meta.get('new', '?')})"}
COLOR = {"base": "#999999", "new": "#1f77b4"}


def phase_span(r, name):
    p = r["phases"].get(name)
    return (p[0], p[1]) if p else (None, None)


def measured(r):
    """Samples of the measured phase (t, rss, threads, fds)."""
    t0, t1 = phase_span(r, "measured")
    if t0 is None:
        return []
    return [s for s in r["samples"] if t0 <= s[0] <= t1]


def fig(f):
    return f"{f['rss_kib'] / 1024:.1f} MiB, {f['threads']} threads, {f['fds']} fds"


def row(name, f):
    return "| " + name + " | " + " | ".join(f(rep[s]) for s in sides) + " |"


lines = []
lines.append("<!-- soak:begin -->")
lines.append("## Soak: thousands of operations, daemon kills, leaks looked for")
lines.append("")
lines.append(
    f"`sudo bash bench/soak.sh`, {meta.get('date')}, {meta.get('cores')} cores, "
    f"{int(meta.get('elapsed', 0)) // 60} min; load average before {meta.get('load_before')}, "
    f"after {meta.get('load_after')} (a shared machine)."
)
if len(sides) > 1:
    lines.append(
        "Both builds ran at the same time, side by side, each driven by the same harness "
        "(tests/soak.rs) with its own daemon in its own network namespace, so each had about half "
        "the machine."
    )
lines.append(
    f"Per side: {meta.get('vms')} QEMU/TCG VMs of {meta.get('memory')} MiB, one worker thread "
    "each, through create, exec, cp (in and back), pause, resume, checkpoint, restore, checkpoint "
    "rm, stop, start, and every third cycle destroy + create, with the guest's agent killed "
    f"every other cycle; the daemon SIGKILLed {meta.get('kills')} times during the first "
    f"{meta.get('chaos')} cycles, then one warm-up cycle and {meta.get('cycles')} measured cycles "
    "on the last daemon. A marker file in every guest is checked after each restore and restart."
)
lines.append("")
lines.append("| | " + " | ".join(label[s] for s in sides) + " |")
lines.append("|---|" + "---|" * len(sides))
lines.append(
    row(
        "result (data, leaks, unexplained failures)",
        lambda r: meta.get("result_" + [k for k in sides if rep[k] is r][0], "?"),
    )
)
lines.append(row("operations (VMs made)", lambda r: f"{r['operations']} ({r['vms_made']})"))
lines.append(
    row(
        "operations per minute",
        lambda r: f"{r['operations'] * 60 / max(r['seconds'], 1):.0f} over {r['seconds'] / 60:.0f} min",
    )
)
lines.append(
    row("daemon SIGKILLs / agent kills", lambda r: f"{len(r['kills'])} / {r['agent_kills']}")
)


def causes(r):
    c = r["failed_attempts"]
    return (
        f"{c.get('DaemonKill', 0)} / {c.get('AfterRestart', 0)} / {c.get('AgentKill', 0)} / "
        f"{c.get('Unexpected', 0)} ({r['retried_ops']} ops retried)"
    )


lines.append(
    row(
        "failed attempts: daemon killed during it / first on a VM after a restart / after an agent kill / unexplained",
        causes,
    )
)
lines.append(row("daemon after the warm-up", lambda r: fig(r["after_warm_up"])))
lines.append(row("daemon after the measured phase", lambda r: fig(r["after_measured"])))


def rss_range(r):
    m = measured(r)
    if not m:
        return "-"
    return (
        f"RSS {min(s[1] for s in m) / 1024:.1f}–{max(s[1] for s in m) / 1024:.1f} MiB, "
        f"threads {min(s[2] for s in m)}–{max(s[2] for s in m)}, fds {min(s[3] for s in m)}–{max(s[3] for s in m)}"
    )


lines.append(row("daemon during the measured phase (sampled every second)", rss_range))
lines.append("")
kinds = sorted(set().union(*(rep[s]["kinds"].keys() for s in sides)))
head = "| operation |" + "".join(f" {label[s]}: n, p50, p99 ms |" for s in sides)
lines.append(head)
lines.append("|---|" + "---:|" * len(sides))
for k in kinds:
    cells = []
    for s in sides:
        v = rep[s]["kinds"].get(k)
        cells.append(f"{v['count']}, {v['p50_ms']:.0f}, {v['p99_ms']:.0f}" if v else "-")
    lines.append(f"| `{k}` | " + " | ".join(cells) + " |")
lines.append("")
lines.append(
    "Times are the `fcm` CLI's wall time of the successful attempt, under the load of all the "
    "side's VMs and workers (and the other side's); an operation a daemon kill interrupted and "
    "that was then found done counts its attempts' total. `agent-kill` is `fcm ssh vm -- pkill -9 "
    "-x fcm-agent` (an SSH login). The first exec after an agent kill waits for the daemon to "
    "notice the silence (7 s) and fails; the harness counts that as an agent-kill failure and "
    "tries again."
)
def shape(msg):
    """A failure's message with its VM names, markers and paths blurred."""
    msg = re.sub(r"soak-\d+(-c\d+-\d+)?", "VM", msg)
    msg = re.sub(r"/var/tmp/\S+", "PATH", msg)
    return msg.split("\n")[0][:160]


for s in sides:
    odd = {}
    for f in rep[s]["failures"]:
        if f["cause"] in ("AfterRestart", "Unexpected"):
            key = (f["cause"], f["kind"], shape(f["message"].split(": ", 1)[-1]))
            odd[key] = odd.get(key, 0) + 1
    if odd:
        lines.append("")
        lines.append(f"{label[s]}: failed attempts after a restart or unexplained, by message:")
        lines.append("")
        for (cause, kind, msg), n in sorted(odd.items(), key=lambda kv: -kv[1])[:8]:
            lines.append(f"- {n} × {cause}, `{kind}`: {msg}")
for s in sides:
    why = os.path.join(a.tmp, s, "why.txt")
    if meta.get("result_" + s) == "failed" and os.path.exists(why):
        text = open(why).read().strip()
        if text:
            lines.append("")
            lines.append(f"{label[s]} failed:")
            lines.append("")
            lines.append("```")
            lines.extend(text.splitlines()[:12])
            lines.append("```")
lines.append("")
lines.append(
    f"![the daemon's RSS and threads over the run, both sides; daemon kills marked]({os.path.basename(a.svg)})"
)
lines.append("<!-- soak:end -->")
print("\n".join(lines))

# --- the plot: RSS (MiB) above, threads below; kills as ticks ---
W, H, L, R, T = 640, 360, 56, 16, 24
PH = 130  # one panel's height
tmax = max(max((s[0] for s in rep[k]["samples"]), default=1) for k in sides)


def panel(y0, idx, name, scale_label):
    vals = [s[idx] / (1024 if idx == 1 else 1) for k in sides for s in rep[k]["samples"]]
    vmax = max(vals, default=1) * 1.1 or 1
    out = [
        f'<rect x="{L}" y="{y0}" width="{W - L - R}" height="{PH}" fill="none" stroke="#ccc"/>',
        f'<text x="{L - 6}" y="{y0 + 10}" text-anchor="end" font-size="10">{vmax:.0f}</text>',
        f'<text x="{L - 6}" y="{y0 + PH}" text-anchor="end" font-size="10">0</text>',
        f'<text x="{L + 4}" y="{y0 + 12}" font-size="11">{name} ({scale_label})</text>',
    ]
    for k in sides:
        pts = " ".join(
            f"{L + (s[0] / tmax) * (W - L - R):.1f},{y0 + PH - (s[idx] / (1024 if idx == 1 else 1)) / vmax * PH:.1f}"
            for s in rep[k]["samples"]
        )
        out.append(f'<polyline fill="none" stroke="{COLOR[k]}" stroke-width="1.2" points="{pts}"/>')
        for t in rep[k]["kills"]:
            x = L + (t / tmax) * (W - L - R)
            out.append(f'<line x1="{x:.1f}" y1="{y0 + PH - 8}" x2="{x:.1f}" y2="{y0 + PH}" stroke="{COLOR[k]}"/>')
        t0, _ = phase_span(rep[k], "measured")
        if t0 is not None and k == sides[-1]:
            x = L + (t0 / tmax) * (W - L - R)
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + PH}" stroke="#2a2" stroke-dasharray="3,3"/>')
    return out


svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
    f'<rect width="{W}" height="{H}" fill="white"/>',
]
svg += panel(T, 1, "daemon RSS", "MiB")
svg += panel(T + PH + 24, 2, "daemon threads", "count")
svg.append(f'<text x="{L}" y="{H - 6}" font-size="10">0 s</text>')
svg.append(f'<text x="{W - R}" y="{H - 6}" text-anchor="end" font-size="10">{tmax:.0f} s</text>')
x = L + 60
for k in sides:
    svg.append(f'<line x1="{x}" y1="{H - 10}" x2="{x + 16}" y2="{H - 10}" stroke="{COLOR[k]}" stroke-width="2"/>')
    svg.append(f'<text x="{x + 20}" y="{H - 6}" font-size="10">{label[k]}</text>')
    x += 190
svg.append(f'<text x="{L}" y="14" font-size="11">ticks: daemon SIGKILLs; dashed: measured phase begins</text>')
svg.append("</svg>")
open(a.svg, "w").write("\n".join(svg) + "\n")
