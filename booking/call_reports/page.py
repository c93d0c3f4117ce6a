"""The call report as a page a support person reads at a glance: one band per
participant, with the visit's timeline as inline SVG plots (no script, no
external resource): the quality level shown, the video layer they received,
loss, RTT and jitter, and bitrates, with reconnects marked where they
happened. Rendered on the server from
:func:`booking.call_reports.assembly.assemble`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

__all__ = ["render"]

W, H, LEFT, RIGHT = 600, 96, 92, 22
QUALITY_Y = {"excellent": 3, "good": 2, "poor": 1, "lost": 0}
QUALITY_COLOUR = {"excellent": "#1a7f37", "good": "#9a6700", "poor": "#cf222e", "lost": "#57606a"}
LAYER_Y = {"f": 3, "h": 2, "q": 1, "single": 3, "paused": 0}
LAYER_NAME = {"f": "full", "h": "half", "q": "quarter", "single": "single", "paused": "paused"}

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f8fa;color:#1f2328}
main{max-width:760px;margin:0 auto;padding:16px}
h1{font-size:1.35rem;margin:.2rem 0}
.visit{color:#424a53;margin:0 0 12px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;margin:0 0 16px;padding:12px}
h2{font-size:1.1rem;margin:0 0 4px}
.facts{display:flex;flex-wrap:wrap;gap:4px 16px;margin:0 0 8px;padding:0;list-style:none}
.facts li{white-space:nowrap}
.bad{color:#a40e26;font-weight:600}
figure{margin:6px 0}
figcaption{font-size:.85rem;color:#424a53}
svg{width:100%;height:auto;display:block}
svg text{font:13px system-ui,sans-serif;fill:#424a53}
table{border-collapse:collapse;width:100%;background:#fff;margin:0 0 16px;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:4px 6px;text-align:left}
th{background:#eaeef2}
.wrap{overflow-x:auto}
small{color:#424a53}
@media (max-width:600px){svg text{font-size:16px}main{padding:8px}section{padding:8px}}
.c-blue{color:#0969da}.c-amber{color:#9a6700}.c-green{color:#1a7f37}.c-grey{color:#57606a}.c-red{color:#cf222e}.c-purple{color:#8250df}
"""


def _t(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%H:%M:%S")
    return "-"


def _x(t: float, span: float) -> float:
    return LEFT + (W - LEFT - RIGHT) * (t / span if span > 0 else 0.0)


def _frame(label: str, ticks: Sequence[tuple[float, str]], span: float, body: str) -> str:
    """An SVG plot: y ticks (0-1 of the height) with labels, time axis in minutes."""
    top, bottom = 8, H - 22
    parts = [f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}">']
    for frac, text in ticks:
        y = bottom - (bottom - top) * frac
        parts.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(text)}</text>'
        )
    step = 60.0 if span > 240 else 30.0 if span > 60 else 10.0
    t = 0.0
    while t <= span + 0.01:
        x = _x(t, span)
        parts.append(f'<text x="{x:.1f}" y="{H - 5}" text-anchor="middle">{_clock(t)}</text>')
        t += step
    parts.append(body)
    parts.append("</svg>")
    return "".join(parts)


def _clock(t: float) -> str:
    return f"{int(t) // 60}:{int(t) % 60:02d}"


def _y(frac: float) -> float:
    top, bottom = 8, H - 22
    return bottom - (bottom - top) * max(0.0, min(1.0, frac))


def _steps(
    points: Sequence[tuple[float, str]],
    levels: Mapping[str, int],
    colours: Callable[[str], str],
    span: float,
) -> str:
    """A step plot of named levels, each segment coloured by its level."""
    out = []
    top = max(levels.values()) or 1
    for i, (t, name) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else t + 5.0
        y = _y(levels.get(name, 0) / top)
        out.append(
            f'<line x1="{_x(t, span):.1f}" x2="{_x(min(end, span), span):.1f}" y1="{y:.1f}"'
            f' y2="{y:.1f}" stroke="{colours(name)}" stroke-width="5"/>'
        )
    return "".join(out)


def _line(points: Sequence[tuple[float, float]], top: float, colour: str, span: float) -> str:
    if not points:
        return ""
    coords = " ".join(f"{_x(t, span):.1f},{_y(v / top if top else 0):.1f}" for t, v in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'


def _marks(reconnects: Sequence[Mapping[str, Any]], start: dt.datetime, span: float) -> str:
    out = []
    for r in reconnects:
        t = (r["at"] - start).total_seconds()
        x = _x(t, span)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{H - 16}" stroke="#8250df"'
            ' stroke-width="2" stroke-dasharray="4 3"/>'
        )
    return "".join(out)


def _figure(
    label: str, ticks: Sequence[tuple[float, str]], span: float, body: str, caption: str
) -> str:
    """:func:`_frame` in a figure under its ``caption`` (HTML, not escaped)."""
    return f"<figure>{_frame(label, ticks, span, body)}<figcaption>{caption}</figcaption></figure>"


def _plot(
    label: str,
    series: Sequence[tuple[Sequence[tuple[float, float]], str]],
    scale: tuple[float, str, str],
    span: float,
    marks: str,
    caption: str,
) -> str:
    """A :func:`_figure` of ``series`` (points, colour) as lines on one axis.
    ``scale`` is (the least top, the unit after a tick's number, the zero
    tick's label): the top is the next round number over the points."""
    least, unit, zero = scale
    top = _nice(max([v for points, _ in series for _, v in points] + [least]))
    ticks = [(1, f"{top:g}{unit}"), (0.5, f"{top / 2:g}{unit}"), (0, zero)]
    lines = "".join(_line(points, top, colour, span) for points, colour in series)
    return _figure(label, ticks, span, lines + marks, caption)


def _nice(top: float) -> float:
    for v in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if top <= v:
            return float(v)
    return top


def _participant(p: Mapping[str, Any], start: dt.datetime, span: float) -> str:
    media = p["media"]
    marks = _marks(p["reconnects"], start, span)
    name = p["name"] or "Unnamed participant"
    role = f" ({escape(p['role'])})" if p["role"] else ""
    layers = ", ".join(
        f"{LAYER_NAME.get(k, k)} {v:.0f} s" for k, v in sorted(p["seconds_on_layer"].items())
    )
    rec = len(p["reconnects"])
    facts = [
        f"Joined {_t(p['joined_at'])}",
        f"Left {_t(p['left_at'])}",
        f'<span class="{"bad" if rec else ""}">Reconnects {rec}</span>',
        f"ICE restarts {p['ice_restarts']}",
        f"TURN relay {'yes' if p['turn'] else 'no'}",
        f"Freezes {p['freezes']} ({p['freeze_seconds']:.1f} s)",
        f"Concealed audio {p['concealed_seconds']:.1f} s",
        f"Video received: {escape(layers) or 'none'}",
    ]
    html = [f"<section><h2>{escape(name)}{role}</h2><ul class=facts>"]
    html += [f"<li>{f}</li>" for f in facts]
    html.append("</ul>")
    quality = [(s["t"], s["quality"]) for s in media]
    html.append(
        _figure(
            "Quality shown",
            [(1, "excellent"), (2 / 3, "good"), (1 / 3, "poor"), (0, "lost")],
            span,
            _steps(quality, QUALITY_Y, lambda q: QUALITY_COLOUR.get(q, "#57606a"), span) + marks,
            "Quality shown (bars); dashed: a reconnect",
        )
    )
    layer_points = []
    for s in media:
        rids = [r if r is not None else "paused" for r in s["layers"].values()]
        if rids:
            layer_points.append((s["t"], min(rids, key=lambda r: LAYER_Y.get(r, 0))))
    if layer_points:
        html.append(
            _figure(
                "Video layer received",
                [(1, "full"), (2 / 3, "half"), (1 / 3, "quarter"), (0, "paused")],
                span,
                _steps(
                    layer_points,
                    LAYER_Y,
                    lambda r: "#0969da" if r != "paused" else "#cf222e",
                    span,
                )
                + marks,
                "Video layer received (lowest of the videos they watch)",
            )
        )
    loss = [(s["t"], 100.0 * float(s["loss"] or 0)) for s in media]
    seen = [(s["t"], 100.0 * float(s["loss"] or 0)) for s in p["page"] if s["loss"] is not None]
    rtt = [(s["t"], 1000.0 * float(s["rtt"])) for s in media if s["rtt"] is not None]
    jit = [(s["t"], 1000.0 * float(s["jitter"])) for s in media if s["jitter"] is not None]
    sent = [(s["t"], float(s["sent"] or 0) / 1000) for s in media]
    got = [(s["t"], float(s["received"] or 0) / 1000) for s in media]
    avail = [(s["t"], float(s["available"] or 0) / 1000) for s in media]
    # The line plots, one a row: label, series (points, colour), scale, caption.
    plots = [
        (
            "Loss",
            [(loss, "#cf222e"), (seen, "#8250df")],
            (5.0, " %", "0 %"),
            "Packet loss, %: <span class=c-red>the worker's</span>,"
            " <span class=c-purple>what their page lost</span>",
        ),
        (
            "RTT and jitter",
            [(rtt, "#0969da"), (jit, "#bf8700")],
            (100.0, " ms", "0"),
            "<span class=c-blue>Round-trip time</span> and <span class=c-amber>jitter</span>, ms",
        ),
        (
            "Bitrate",
            [(avail, "#8c959f"), (sent, "#1a7f37"), (got, "#0969da")],
            (100.0, " k", "0"),
            "kbit/s: <span class=c-green>sent</span>,"
            " <span class=c-blue>received</span>,"
            " <span class=c-grey>estimated available</span>",
        ),
    ]
    html += [
        _plot(label, series, scale, span, marks, caption) for label, series, scale, caption in plots
    ]
    html.append("</section>")
    return "".join(html)


def _summary(parts: Sequence[Mapping[str, Any]]) -> str:
    """One row per participant: the figures that say whose call was bad."""
    if not parts:
        return ""
    rows = []
    for p in parts:
        media = p["media"]
        worst = min((s["quality"] for s in media), key=lambda q: QUALITY_Y.get(q, 0), default="")
        low = min(p["seconds_on_layer"], key=lambda r: LAYER_Y.get(r, 0), default="")
        loss = float(p["peak_loss"])
        rec = len(p["reconnects"])
        rows.append(
            f"<tr><td>{escape(p['name'] or 'Unnamed')}<br><small>{escape(p['role'])}</small></td>"
            f"<td>{escape(worst)}</td><td>{escape(LAYER_NAME.get(low, low) or 'none')}</td>"
            f"<td>{100 * loss:.0f} %</td><td class={'bad' if rec else ''}>{rec}</td>"
            f"<td>{'yes' if p['turn'] else 'no'}</td><td>{p['freezes']}</td></tr>"
        )
    return (
        "<div class=wrap><table><tr><th>Who</th><th>Worst quality</th>"
        "<th>Lowest video</th><th>Peak loss</th><th>Reconnects</th><th>TURN</th>"
        "<th>Freezes</th></tr>" + "".join(rows) + "</table></div>"
    )


def render(report: Mapping[str, Any], title: str, nonce: str) -> str:
    """The report page (HTML with inline SVG; its one style by ``nonce``)."""
    start = report["started_at"]
    span = max(float(report["duration_seconds"]), 10.0)
    status = "ended" if report["ready"] else "in progress or not yet complete"
    head = (
        f"<h1>{escape(title)}</h1><p class=visit>Call {_t(start)} to"
        f" {_t(report['ended_at'])} UTC, {_clock(span)} long, {status}.</p>"
    )
    # The table in the report's order; the timelines of whoever had the
    # worst of it first, which is whom support is asked about.
    troubled = sorted(
        report["participants"], key=lambda p: (-len(p["reconnects"]), -float(p["peak_loss"]))
    )
    body = _summary(report["participants"]) + "".join(
        _participant(p, start, span) for p in troubled
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style nonce='{nonce}'>{_CSS}</style></head>"
        f"<body><main>{head}{body or '<p>No one joined this call.</p>'}</main></body></html>"
    )
