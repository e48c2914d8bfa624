"""A static HTML site from result records: an index and one page per track.

Each track page has one section per base checkpoint (and track version): records of
different bases are never pooled or ranked together, and a warning names them. A section
has the leaderboard table (n, mean ± 95% CI over seeds, tie ranks; see
:mod:`harness.views.leaderboard`), the Average view (the critical-difference analysis of
:mod:`harness.views.cd` with its diagrams), a plot of the final metric against the achieved speedup
per method and of params kept against the metric (the best mean ranks coloured, the rest grey);
then the channels every layer kept for a run chosen from a list.
Plots are inline SVG (matplotlib), so the site needs no network and no server
beyond ``python -m http.server`` (``pbench-harness serve``).
"""

from __future__ import annotations

import html
import io
import os
from collections import defaultdict
from pathlib import Path

from harness.files import atomic_write_text
from harness.views import latency as lat
from harness.views import leaderboard as lb
from harness.views import stats
from specs.result import ResultRecord

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:.9rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}.failed{color:#b00}.warn{color:#a60;font-weight:600}
.legend{font-size:.85rem;color:#444;max-width:1000px}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0}.prov{font-size:.8rem;color:#555}
"""


def _svg(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


#: methods coloured in the plots (the best mean ranks of the Average view); the rest are grey
TOP_K = 5


def _plots(records: list[ResultRecord], top: list[str]) -> tuple[str, str]:
    os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("PBENCH_CACHE", "/tmp")) / "mpl"))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in records if r.status == "ok" and stats.usable(r.metric.final) is not None]
    by_method = defaultdict(list)
    for r in ok:
        by_method[lb.run_name(r)].append(r)
    names = sorted(by_method, key=lambda n: (n in top, n))  # grey first, underneath

    def style(name: str) -> dict:
        return ({"label": name, "zorder": 3, "color": f"C{top.index(name)}"} if name in top else
                {"color": "#c4c4c4", "zorder": 1, "lw": .8})

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in names:
        rs = by_method[name]
        pts = defaultdict(list)
        for r in rs:
            pts[r.speedup.target].append((r.speedup.achieved, r.metric.final))
        xs = sorted(pts)
        ax.errorbar([sum(a for a, _ in pts[x]) / len(pts[x]) for x in xs],
                    [sum(m for _, m in pts[x]) / len(pts[x]) for x in xs],
                    yerr=[(max(m for _, m in pts[x]) - min(m for _, m in pts[x])) / 2 for x in xs]
                    if name in top else None, marker="o", ms=4 if name in top else 2, capsize=3, **style(name))
    ax.set_xlabel("achieved MACs speedup")
    ax.set_ylabel(f"final {ok[0].metric.name if ok else 'metric'}")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=.3)
    labelled = any(n in top for n in names)  # no legend without a coloured series
    if labelled:
        ax.legend(fontsize=7, title=f"grey: {len(names) - len(top)} others" if len(names) > len(top) else None,
                  title_fontsize=7)
    speed = _svg(fig)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name in names:
        rs = by_method[name]
        st = style(name)
        st.pop("lw", None)
        ax.scatter([100 * r.params.pruned / r.params.base for r in rs], [r.metric.final for r in rs],
                   s=18 if name in top else 8, **st)
    ax.set_xlabel("parameters kept (%)")
    ax.set_ylabel("final metric")
    ax.grid(alpha=.3)
    if labelled:
        ax.legend(fontsize=7)
    return speed, _svg(fig)


def _layers_svg(r: ResultRecord) -> str:
    import matplotlib.pyplot as plt
    names = list(r.layer_channels)
    kept = [100 * a / b for b, a in r.layer_channels.values()]
    fig, ax = plt.subplots(figsize=(max(5.5, 0.22 * len(names)), 3.2))
    ax.bar(range(len(names)), kept, color="#4a7")
    ax.axhline(100 * (r.min_channel_fraction or 0), color="#b00", lw=.8, ls="--")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("channels kept (%)")
    ax.set_ylim(0, 105)
    return _svg(fig)


def _table(rows: list[lb.Row], all_columns: bool = False) -> str:
    first = 0 if all_columns else 1  # a track page drops the track column
    head = "".join(f"<th>{html.escape(c)}</th>" for c in lb.COLUMNS[first:])
    body = []
    for r in rows:
        cells = lb.cells(r)[first:]
        cls = ' class="failed"' if r.final.n == 0 else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _average_table(rows: list[lb.Row]) -> str:
    """The Average view of one section: per (strategy, recipe), the analyses of Final and Pruned+BN, their
    critical-difference diagrams, the table with the control comparisons, the power line."""
    from harness.views.diagram import cd_diagram
    parts = []
    for (_, strategy, recipe), group in lb.groups(rows).items():
        speedups = sorted({r.speedup for r in group})
        if len(speedups) < 2 and max((r.final.n for r in group), default=0) < 2:
            continue
        analyses = [lb.analysis(group, m) for m in lb.ANALYSED]
        lines = "".join(f"<p class=legend>{html.escape(lb.analysis_line(a))}.</p>" for a in analyses)
        figs = "".join("<figure>" + cd_diagram(
            {str(n): r for n, r in a.mean_ranks.items()}, a.critical_difference,
            [[str(n) for n in c] for c in a.cliques()],
            f"{lb.ANALYSED[a.metric]}: mean rank over {a.n_blocks} blocks (speedup, seed)") + "</figure>"
            for a in analyses if a.friedman_p is not None)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in lb.average_columns(group))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in lb.average_cells(a, speedups))
                       + "</tr>" for a in lb.average(group))
        parts.append(f"<h3>Average: critical-difference analysis ({html.escape(lb.setting_label(strategy, recipe))})"
                     f"</h3>{lines}<div class=plots>{figs}</div><table class=\"average\"><tr>{head}</tr>{body}"
                     f"</table><p class=legend>{html.escape(lb.power_line(group, 'final'))}; "
                     f"{html.escape(lb.power_line(group, 'pruned_recal'))}.</p>")
    return "".join(parts)


def _warnings(records: list[ResultRecord]) -> str:
    return "".join(f'<p class="warn">{html.escape(w)}</p>' for w in lb.warnings(records))


def _legend(rows: list[lb.Row]) -> str:
    flag = " " + lb.FLAG_LEGEND if any(r.constant_scores for r in rows) else ""
    return f'<p class="legend">{html.escape(lb.LEGEND + " " + lat.LEGEND + " " + lb.AVERAGE_LEGEND + flag)}</p>'


def _provenance(records: list[ResultRecord]) -> str:
    p = records[0].provenance
    digests = sorted({r.method.image_digest for r in records if r.method.image_digest})
    items = [f"harness {p.harness_version} ({p.git_commit or 'no git'})", f"spec {p.spec_version}",
             f"track hash {records[0].track.hash[:16]}", f"checkpoint sha256 {(p.checkpoint_sha256 or '-')[:16]}",
             "packages " + ", ".join(f"{k} {v}" for k, v in sorted(p.packages.items())),
             f"host {p.host}", f"images {', '.join(d[7:19] for d in digests) or '-'}"]
    return '<p class="prov">' + " · ".join(html.escape(i) for i in items) + "</p>"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")


def leaderboard_page(records: list[ResultRecord]) -> str:
    """The leaderboard tables alone (one per section), as one HTML page."""
    rows = lb.rows(records)
    by_section = lb.sections(rows)
    body = [_warnings(records)]
    for section, srows in by_section.items():
        srecords = [r for r in records if lb.section_of(r) == section]
        body.append(f"<h2>{html.escape(section.label)}</h2>{_table(srows, all_columns=True)}"
                    f"{_average_table(srows)}{_provenance(srecords)}")
    return _page("PruningBench leaderboard", "<h1>Leaderboard</h1>" + "".join(body) + (_legend(rows) if rows else ""))


def build_site(records: list[ResultRecord], out: Path) -> list[Path]:
    """Write ``index.html`` and ``<track>.html`` into ``out``; returns the pages."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_track = defaultdict(list)
    for r in records:
        by_track[r.track.id].append(r)
    pages = []
    index = ["<h1>PruningBench leaderboards</h1><ul>"]
    for track, rs in sorted(by_track.items()):
        rows = lb.rows(rs)
        blocks = []
        for section, srows in lb.sections(rows).items():
            srecords = [r for r in rs if lb.section_of(r) == section]
            first = max(lb.groups(srows).values(), key=len)  # the setting with most rows
            top = [str(n) for n in lb.analysis(first, "final").names[:TOP_K]]
            speed, params = _plots(srecords, top)
            blocks.append(f"<h2>{html.escape(section.label)}</h2>{_table(srows)}{_average_table(srows)}"
                          f"<div class=plots><figure>{speed}<figcaption>final metric vs achieved speedup (bars: "
                          f"range over seeds; coloured: the {TOP_K} best mean ranks)</figcaption></figure>"
                          f"<figure>{params}<figcaption>parameters kept vs final metric</figcaption></figure></div>"
                          f"{_provenance(srecords)}")
        ok = sorted((r for r in rs if r.status == "ok"),
                    key=lambda r: (r.provenance.checkpoint_sha256 or "", r.method.id, r.speedup.target, r.seed))
        several = len(lb.sections(rows)) > 1
        options = "".join(f'<option value="run{i}">{html.escape(lb.run_name(r))} {r.speedup.target:g}x seed {r.seed}'
                          + (f" (base {lb.short(r.provenance.checkpoint_sha256, 8)})" if several else "")
                          + "</option>" for i, r in enumerate(ok))
        layer_figs = "".join(f'<div class="run" id="run{i}" style="display:{"block" if i == 0 else "none"}">'
                             f"{_layers_svg(r)}</div>" for i, r in enumerate(ok))
        script = ("<script>function show(id){document.querySelectorAll('.run').forEach("
                  "e=>e.style.display=e.id===id?'block':'none')}</script>")
        body = (f"<p><a href=index.html>all tracks</a></p><h1>{html.escape(track)}</h1>{_warnings(rs)}"
                f"{''.join(blocks)}{_legend(rows)}<h2>Channels kept per layer</h2>"
                f'<select id=run onchange="show(this.value)">{options}</select>{layer_figs}{script}')
        path = out / f"{track}.html"
        atomic_write_text(path, _page(f"{track} — PruningBench", body))
        pages.append(path)
        n_ok = sum(r.status == "ok" for r in rs)
        index.append(f'<li><a href="{html.escape(path.name)}">{html.escape(track)}</a>: {n_ok} runs ok, '
                     f"{len(rs) - n_ok} failed</li>")
    index.append("</ul>")
    atomic_write_text(out / "index.html", _page("PruningBench leaderboards", "".join(index)))
    return [out / "index.html", *pages]
