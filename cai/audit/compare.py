"""``cai eval compare`` results as a section of a report page (:mod:`cai.audit.report`).

:func:`compare_section` is used twice: ``cai eval compare --html`` writes a page of its own, and
``cai audit --html`` adds the section for every comparison run found in the audited directory.
It lays out a finished ``compare.json`` result; computing one is :mod:`cai.stages.compare`'s job.
"""

from __future__ import annotations

from typing import Any

from .report import Report, esc, figure


def _rate(s: dict | None) -> str:
    if not s or s.get("win_rate") is None:
        return "-"
    return f"{s['win_rate']:.2f} [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"


PAIR_COLUMNS = ["model", "vs", "W/T/L", "win rate [95% CI]", "harmless", "refusals", "Elo"]


def pair_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per compared pair, as text: the terminal table and the HTML report both show it."""
    people = {c["name"]: c for c in result["contestants"]}
    rows = []
    for p in result["pairs"]:
        me, them = people[p["model"]], people[p["opponent"]]
        elo = "" if me.get("elo") is None else f"{me['elo']:.0f}"
        if elo and me.get("elo_ci95"):
            elo += f" [{me['elo_ci95'][0]:.0f}, {me['elo_ci95'][1]:.0f}]"
        rows.append(
            [
                p["model"],
                p["opponent"],
                f"{p['wins']}/{p['ties']}/{p['losses']}",
                _rate(p),
                _rate(p["harmless"]),
                f"{me['refusal_share']:.2f} vs {them['refusal_share']:.2f}",
                elo,
            ]
        )
    return rows


def win_rate_figure(pairs: list[dict[str, Any]]):
    """One bar per pair: the win rate, a whisker for its 95% interval, a line at 0.5."""
    fig = figure(figsize=(6.4, 0.5 + 0.45 * len(pairs)))
    ax = fig.add_subplot()
    labels = [f"{p['model']} vs {p['opponent']}" for p in pairs]
    rates = [p["win_rate"] or 0.0 for p in pairs]
    lo = [r - p["ci95"][0] for r, p in zip(rates, pairs)]
    hi = [p["ci95"][1] - r for r, p in zip(rates, pairs)]
    ys = list(range(len(pairs)))[::-1]
    ax.barh(ys, rates, xerr=[lo, hi], color="#6a9fd8", ecolor="#222", capsize=3)
    ax.axvline(0.5, color="#c33", linewidth=1)
    ax.set_yticks(ys, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (a tie counts half), 95% bootstrap interval")
    return fig


def compare_section(page: Report, result: dict[str, Any], title: str | None = None) -> None:
    """Chart, the table of pairs, win rates by principle, the method and a few examples."""
    pairs = result["pairs"]
    settings = result["settings"]
    cons = settings["constitution"]
    page.heading(title or f"Comparison against {result['baseline']}")
    page.paragraph(
        f"{result['prompts']} prompts, constitution {cons['name']} {cons['hash'][:8]}, judge "
        f"{settings['judge']}, {settings['ensemble']} principles per pair, both orders.",
        note=True,
    )
    if pairs:
        page.figures([(win_rate_figure(pairs), "win rate of each pair with its 95% interval")])
    page.table(PAIR_COLUMNS, pair_rows(result))
    principles = sorted({pid for p in pairs for pid in p["per_principle"]})
    if principles:
        page.heading("By principle", 3)
        page.table(
            ["principle"] + [f"{p['model']} vs {p['opponent']}" for p in pairs],
            [
                [pid]
                + [
                    f"{s['win_rate']:.2f} (n={s['n']})"
                    if (s := p["per_principle"].get(pid))
                    else "-"
                    for p in pairs
                ]
                for pid in principles
            ],
        )
    page.heading("Method", 3)
    page.table(["", ""], [[k, str(v)] for k, v in result["method"].items()])
    if result["examples"]:
        page.heading("Examples", 3)
        page.raw(
            "".join(
                f"<details class=example><summary>{esc(x['id'])}: "
                f"{esc(x['prompt'][-1]['content'][:120])}</summary><dl>"
                + "".join(
                    f"<dt>{esc(n)}</dt><dd><pre>{esc(a)}</pre></dd>"
                    for n, a in x["answers"].items()
                )
                + "</dl><p>"
                + esc(", ".join(f"{k}: {v}" for k, v in x["outcomes"].items()))
                + "</p></details>"
                for x in result["examples"]
            )
        )


def html_report(result: dict[str, Any]) -> str:
    """The page ``cai eval compare --html`` writes."""
    page = Report("cai eval compare")
    compare_section(page, result)
    return page.html()
