"""Small server-rendered SVG charts (no plotting library at request time, nothing from a CDN).

Each function returns one ``<svg>`` element; points carry ``<title>`` tooltips and, where given,
links. Coordinates are in data units; axes get "nice" ticks.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from harness.views.diagram import PALETTE, esc, svg, cd_diagram, color

__all__ = ["PALETTE", "cd_diagram", "channel_bars", "color", "line_chart", "nice_ticks", "scatter_chart"]

DASHES = ["", "5 3", "2 2", "8 3 2 3"]


GREY = "#c4c4c4"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


class _Frame:
    """Axes, ticks and the data -> pixel mapping of one chart."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], width: int, height: int, logx: bool,
                 xlabel: str, ylabel: str, pad: float = 0.06):
        self.w, self.h, self.logx = width, height, logx
        self.left, self.right, self.top, self.bottom = 58, 16, 14, 44
        fx = (lambda v: math.log2(v)) if logx else (lambda v: v)
        xs_t = [fx(x) for x in xs if x is not None and (x > 0 or not logx)] or [0.0, 1.0]
        ys = [y for y in ys if y is not None] or [0.0, 1.0]
        x0, x1 = min(xs_t), max(xs_t)
        y0, y1 = min(ys), max(ys)
        dx, dy = (x1 - x0) or 1.0, (y1 - y0) or max(1.0, abs(y1) * 0.05)
        self.x0, self.x1 = x0 - pad * dx, x1 + pad * dx
        self.y0, self.y1 = y0 - pad * dy, y1 + pad * dy
        self.fx, self.xlabel, self.ylabel = fx, xlabel, ylabel

    def px(self, x: float) -> float:
        return self.left + (self.fx(x) - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        return self.h - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def axes(self) -> str:
        parts = []
        x_ticks = ([2 ** k for k in range(math.floor(self.x0), math.ceil(self.x1) + 1)
                    if self.x0 <= k <= self.x1] if self.logx else
                   [t for t in nice_ticks(self.x0, self.x1) if self.x0 <= t <= self.x1])
        for t in x_ticks:
            x = self.px(t)
            parts.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.h - self.bottom}" '
                         f'class="grid"/><text x="{x:.1f}" y="{self.h - self.bottom + 15}" class="tick" '
                         f'text-anchor="middle">{_fmt(t)}{"x" if self.logx else ""}</text>')
        for t in [t for t in nice_ticks(self.y0, self.y1) if self.y0 <= t <= self.y1]:
            y = self.py(t)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.w - self.right}" y2="{y:.1f}" '
                         f'class="grid"/><text x="{self.left - 6}" y="{y + 4:.1f}" class="tick" '
                         f'text-anchor="end">{_fmt(t)}</text>')
        parts.append(f'<rect x="{self.left}" y="{self.top}" width="{self.w - self.left - self.right}" '
                     f'height="{self.h - self.top - self.bottom}" class="frame"/>')
        parts.append(f'<text x="{(self.left + self.w - self.right) / 2:.0f}" y="{self.h - 8}" class="label" '
                     f'text-anchor="middle">{esc(self.xlabel)}</text>')
        parts.append(f'<text transform="translate(14 {(self.top + self.h - self.bottom) / 2:.0f}) rotate(-90)" '
                     f'class="label" text-anchor="middle">{esc(self.ylabel)}</text>')
        return "".join(parts)


def _legend(names: list[str]) -> str:
    items = "".join(f'<li><span class="swatch" style="background:{color(i)}"></span>{esc(n)}</li>'
                    for i, n in enumerate(names))
    return f'<ul class="legend">{items}</ul>'


def _error_bar(cx: float, y_lo: float, y_hi: float, c: str) -> str:
    return (f'<path d="M{cx:.1f},{y_lo:.1f}V{y_hi:.1f}M{cx - 4:.1f},{y_lo:.1f}h8M{cx - 4:.1f},{y_hi:.1f}h8" '
            f'stroke="{c}" stroke-width="1.2"/>')


def line_chart(series: dict[str, list[tuple[float, float, Optional[float], str]]], xlabel: str, ylabel: str,
               logx: bool = True, width: int = 620, height: int = 360, highlight: Optional[list[str]] = None) -> str:
    """One line per series through (x, y) points with ±err bars; each point: (x, y, err, tooltip). With
    ``highlight``, only those series are coloured (and have error bars and a legend entry); the others are thin
    grey lines drawn underneath, still with tooltips."""
    xs = [p[0] for pts in series.values() for p in pts]
    ys = [v for pts in series.values() for p in pts for v in ((p[1] - (p[2] or 0)), p[1] + (p[2] or 0))]
    if not xs:
        return '<p class="empty">no finished runs to plot yet</p>'
    f = _Frame(xs, ys, width, height, logx, xlabel, ylabel)
    body = [f.axes()]
    shown = [n for n in series if highlight is None or n in highlight]
    grey = [n for n in series if n not in shown]
    for name in grey + shown:  # grey first: the highlighted lines are drawn on top
        pts = sorted(series[name])
        i = shown.index(name) if name in shown else -1
        c = color(i) if i >= 0 else GREY
        dash = DASHES[(i // len(PALETTE)) % len(DASHES)] if i >= 0 else ""
        path = " ".join(f"{'M' if j == 0 else 'L'}{f.px(x):.1f},{f.py(y):.1f}" for j, (x, y, _, _) in enumerate(pts))
        body.append(f'<path d="{path}" fill="none" stroke="{c}" stroke-width="{1.8 if i >= 0 else 1}" '
                    f'stroke-dasharray="{dash}"/>')
        for x, y, err, tip in pts:
            cx, cy = f.px(x), f.py(y)
            if err and i >= 0:
                body.append(_error_bar(cx, f.py(y - err), f.py(y + err), c))
            body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{3.5 if i >= 0 else 2.5}" fill="{c}"><title>'
                        f'{esc(name)}: {esc(tip)}</title></circle>')
    legend = _legend(shown) + (f'<p class="muted legend-grey">grey: {len(grey)} other'
                               f'{"s" if len(grey) > 1 else ""} ({esc(", ".join(grey))})</p>' if grey else "")
    return f'<div class="figure">{svg(width, height, "".join(body), ylabel)}{legend}</div>'


def scatter_chart(points: list[tuple[str, float, float, Optional[float], str, Optional[str]]],
                  front: list[tuple[float, float]], xlabel: str, ylabel: str, width: int = 620,
                  height: int = 360, highlight: Optional[list[str]] = None) -> str:
    """Points (series name, x, y, ±err or None, tooltip, link) coloured by series, with error bars, and a step
    line through ``front``; with ``highlight``, the other series' points are small, grey and drawn first."""
    pts = [p for p in points if p[1] is not None and p[2] is not None]
    if not pts:
        return '<p class="empty">no runs with a latency measurement yet</p>'
    names = [n for n in dict.fromkeys(p[0] for p in pts) if highlight is None or n in highlight]
    grey = [n for n in dict.fromkeys(p[0] for p in pts) if n not in names]
    pts.sort(key=lambda p: p[0] in names)  # grey underneath
    f = _Frame([p[1] for p in pts], [v for p in pts for v in (p[2] - (p[3] or 0), p[2] + (p[3] or 0))], width,
               height, False, xlabel, ylabel)
    body = [f.axes()]
    if len(front) > 1:
        path = "M" + " L".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y in sorted(front))
        body.append(f'<path d="{path}" class="front"/>')
    for name, x, y, err, tip, href in pts:
        c = color(names.index(name)) if name in names else GREY
        if err and name in names:
            body.append(_error_bar(f.px(x), f.py(y - err), f.py(y + err), c))
        dot = (f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="{4 if name in names else 2.5}" fill="{c}" '
               f'fill-opacity=".85"><title>{esc(name)}: {esc(tip)}</title></circle>')
        body.append(f'<a href="{esc(href)}">{dot}</a>' if href else dot)
    legend = _legend(names) + (f'<p class="muted legend-grey">grey: {len(grey)} other'
                               f'{"s" if len(grey) > 1 else ""} ({esc(", ".join(grey))})</p>' if grey else "")
    return f'<div class="figure">{svg(width, height, "".join(body), ylabel)}{legend}</div>'


def channel_bars(layers: list[tuple[str, int, int]], width: int = 1000) -> str:
    """Channels per layer before (light) and after (dark) pruning, one row per layer."""
    if not layers:
        return '<p class="empty">no per-layer channel counts in this record</p>'
    row, left, right, top = 17, 210, 110, 22
    height = top + row * len(layers) + 10
    most = max(b for _, b, _ in layers) or 1
    scale = (width - left - right) / most
    body = [f'<text x="{left}" y="13" class="tick">channels (light: before, dark: after pruning)</text>']
    for i, (name, before, after) in enumerate(layers):
        y = top + i * row
        kept = after / before if before else 0
        body.append(
            f'<g><title>{esc(name)}: {after} of {before} channels kept ({kept:.0%})</title>'
            f'<text x="{left - 6}" y="{y + 11}" class="tick" text-anchor="end">{esc(name[-28:])}</text>'
            f'<rect x="{left}" y="{y + 2}" width="{before * scale:.1f}" height="{row - 4}" class="before"/>'
            f'<rect x="{left}" y="{y + 2}" width="{after * scale:.1f}" height="{row - 4}" class="after"/>'
            f'<text x="{left + before * scale + 5:.1f}" y="{y + 11}" class="tick">{after}/{before} '
            f'({kept:.0%})</text></g>')
    return svg(width, height, "".join(body), "channels per layer")

