"""The critical-difference diagram (Demšar 2006) as one standalone ``<svg>`` (no plotting library, nothing from a
CDN): the same drawing on the static site, the platform and in the README.

scikit-posthocs has ``critical_difference_diagram``, but it draws with matplotlib, which the platform does not
import at request time; this one draws the same elements (mean ranks, the CD bar, the groups no test separates,
from :meth:`harness.views.cd.Analysis.cliques`) in about 50 lines.
"""

from __future__ import annotations

import html
from typing import Optional

#: Tableau 10 (as the platform's charts)
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def esc(s) -> str:
    """``s`` as text safe inside SVG/HTML markup and attribute values."""
    return html.escape(str(s), quote=True)


def svg(width: int, height: int, body: str, label: str) -> str:
    """An ``<svg>`` chart element of ``body`` (``label``: its accessible name); the web's charts use it too."""
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>')



#: the longest label that fits beside the axis (with its mean rank); longer names are cut, the full name is the
#: label's tooltip
LABEL_CHARS = 24


def short_label(name) -> str:
    name = str(name)
    return name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "…"


#: the diagram's own text styles, scoped to it (it is also a standalone file: the README's, the static site's)
CD_STYLE = ("<style>.cdd .tick{font:11px system-ui,sans-serif;fill:#444}"
            ".cdd .label{font:600 12px system-ui,sans-serif;fill:#222}</style>")


def cd_diagram(mean_ranks: dict[str, float], critical_difference: Optional[float], cliques: list[list[str]],
               title: str = "", width: int = 780) -> str:
    """A critical-difference diagram (Demšar 2006): the rank axis (1 = best, on the left), each method's mean rank
    with its label (the better half on the left, the rest on the right), the critical difference as a bar above
    the axis, and one thick bar under the axis per group of methods no test separates."""
    names = sorted(mean_ranks, key=lambda n: (mean_ranks[n], n))
    k = len(names)
    if k < 2:
        return '<p class="empty">too few methods for a critical-difference diagram</p>'
    row, left, right = 18, 215, 215
    top = 22 if title else 4
    axis_y = top + (46 if critical_difference else 24)
    bars_y = axis_y + 12
    label_y0 = bars_y + 8 * len(cliques) + 16
    half = (k + 1) // 2
    height = label_y0 + row * max(half, k - half) + 8

    def px(r: float) -> float:
        return left + (r - 1) / max(1, k - 1) * (width - left - right)

    body = [f'<rect width="{width}" height="{height}" fill="#fff"/>', CD_STYLE,
            f'<text x="{width / 2:.0f}" y="13" class="label" text-anchor="middle">{esc(title)}</text>'
            if title else "",
            f'<line x1="{px(1):.1f}" y1="{axis_y}" x2="{px(k):.1f}" y2="{axis_y}" stroke="#333" stroke-width="1.2"/>']
    for t in range(1, k + 1):
        body.append(f'<line x1="{px(t):.1f}" y1="{axis_y - 5}" x2="{px(t):.1f}" y2="{axis_y}" stroke="#333"/>'
                    f'<text x="{px(t):.1f}" y="{axis_y - 8}" class="tick" text-anchor="middle">{t}</text>')
    if critical_difference:
        x0, x1 = px(1), px(min(k, 1 + critical_difference))
        body.append(f'<g><title>critical difference {critical_difference:.2f} ranks</title>'
                    f'<path d="M{x0:.1f},{top + 12}H{x1:.1f}M{x0:.1f},{top + 8}v8M{x1:.1f},{top + 8}v8" '
                    f'stroke="#b00" stroke-width="1.6"/><text x="{x1 + 6:.1f}" y="{top + 16}" class="tick">'
                    f'CD = {critical_difference:.2f}</text></g>')
    for i, clique in enumerate(cliques):
        lo, hi = min(mean_ranks[n] for n in clique), max(mean_ranks[n] for n in clique)
        y = bars_y + 8 * i
        body.append(f'<g><title>not separated: {esc(", ".join(clique))}</title><line x1="{px(lo) - 3:.1f}" '
                    f'y1="{y}" x2="{px(hi) + 3:.1f}" y2="{y}" stroke="#222" stroke-width="4" '
                    f'stroke-linecap="round"/></g>')
    for i, name in enumerate(names):
        r = mean_ranks[name]
        on_left = i < half
        y = label_y0 + row * (i if on_left else k - 1 - i)
        x_end = left - 10 if on_left else width - right + 10
        anchor = "end" if on_left else "start"
        body.append(f'<g><title>{esc(name)}: mean rank {r:.2f}</title>'
                    f'<path d="M{px(r):.1f},{axis_y}V{y}H{x_end:.1f}" fill="none" stroke="{color(i)}" '
                    f'stroke-width="1.3"/><circle cx="{px(r):.1f}" cy="{axis_y}" r="3" fill="{color(i)}"/>'
                    f'<text x="{x_end + (-4 if on_left else 4):.1f}" y="{y + 4}" class="tick" '
                    f'text-anchor="{anchor}">{esc(short_label(name))} ({r:.2f})</text></g>')
    return svg(width, height, f'<g class="cdd">{"".join(body)}</g>', title or "critical-difference diagram")
