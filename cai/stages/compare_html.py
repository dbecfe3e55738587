"""One self-contained HTML page from ``compare.json`` (no network, every model text escaped).

Kept to one function so that it can move onto a shared report module as one section.
"""

from __future__ import annotations

from html import escape
from typing import Any


def html_report(result: dict[str, Any]) -> str:
    """Win rates with 95% intervals as an inline SVG chart, the tables, and a few examples."""
    e = lambda v: escape(str(v))  # noqa: E731
    rate = lambda s: (  # noqa: E731
        f"{s['win_rate']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]" if s else "-"
    )
    people = {c["name"]: c for c in result["contestants"]}
    pairs = result["pairs"]
    # chart: one bar per pair, 0..1 on the x axis, a whisker for the interval, a line at 0.5
    w, row = 420, 26
    svg = [f'<svg width="{w + 220}" height="{row * len(pairs) + 30}" role="img">']
    for k, p in enumerate(pairs):
        y = 10 + k * row
        lo, hi = p["ci95"]
        svg.append(
            f'<text x="0" y="{y + 15}" font-size="12">{e(p["model"])} vs {e(p["opponent"])}'
            f'</text><rect x="200" y="{y + 4}" width="{w * p["win_rate"]:.1f}" height="14" '
            f'fill="#6a9fd8"/><line x1="{200 + w * lo:.1f}" x2="{200 + w * hi:.1f}" '
            f'y1="{y + 11}" y2="{y + 11}" stroke="#222" stroke-width="2"/>'
        )
    h = row * len(pairs) + 14
    svg.append(f'<line x1="{200 + w / 2}" x2="{200 + w / 2}" y1="4" y2="{h}" stroke="#c33"/>')
    svg.append(f'<text x="{200 + w / 2 - 8}" y="{h + 12}" font-size="11">0.5</text></svg>')
    head = "<tr>" + "".join(
        f"<th>{c}</th>"
        for c in ("model", "vs", "W/T/L", "win rate [95% CI]", "harmless", "refusals", "Elo")
    )
    body = "".join(
        f"<tr><td>{e(p['model'])}</td><td>{e(p['opponent'])}</td>"
        f"<td>{p['wins']}/{p['ties']}/{p['losses']}</td><td>{rate(p)}</td>"
        f"<td>{rate(p['harmless'])}</td><td>{people[p['model']]['refusal_share']:.2f} vs "
        f"{people[p['opponent']]['refusal_share']:.2f}</td>"
        f"<td>{e(people[p['model']]['elo'] or '')}</td></tr>"
        for p in pairs
    )
    principles = sorted({pid for p in pairs for pid in p["per_principle"]})
    by_principle = "".join(
        f"<tr><td>{e(pid)}</td>"
        + "".join(
            f"<td>{e(s['win_rate'])} (n={s['n']})</td>"
            if (s := p["per_principle"].get(pid))
            else "<td>-</td>"
            for p in pairs
        )
        + "</tr>"
        for pid in principles
    )
    examples = "".join(
        f"<h3>{e(x['id'])}</h3><p><b>prompt:</b> {e(x['prompt'][-1]['content'])}</p><dl>"
        + "".join(f"<dt>{e(n)}</dt><dd><pre>{e(a)}</pre></dd>" for n, a in x["answers"].items())
        + "</dl><p>"
        + ", ".join(f"{e(k)}: {v}" for k, v in x["outcomes"].items())
        + "</p>"
        for x in result["examples"]
    )
    cons = result["settings"]["constitution"]
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>cai eval compare</title>'
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}td,th{padding:2px 8px;"
        "text-align:left}pre{white-space:pre-wrap}</style></head><body>"
        f"<h1>Comparison against {e(result['baseline'])}</h1>"
        f"<p>{result['prompts']} prompts, constitution {e(cons['name'])} "
        f"{e(cons['hash'][:8])}, judge {e(result['settings']['judge'])}, "
        f"{result['settings']['ensemble']} principles per pair, both orders.</p>"
        + "".join(svg)
        + f"<table>{head}{body}</table><h2>By principle</h2><table><tr><th>principle</th>"
        + "".join(f"<th>{e(p['model'])} vs {e(p['opponent'])}</th>" for p in pairs)
        + f"</tr>{by_principle}</table><h2>Method</h2><ul>"
        + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in result["method"].items())
        + f"</ul><h2>Examples</h2>{examples}</body></html>\n"
    )
