"""`cai eval labeler` and `cai eval compare`: parse, run, print a summary (or JSON)."""

from __future__ import annotations

import json

import typer

from ..config import CompareConfig, LabelerConfig
from . import DRY_RUN, Bar, eval_app, option_param, show_plan, stage_command


@stage_command(eval_app, "labeler", LabelerConfig)
def eval_labeler(cfg: LabelerConfig) -> None:
    """Score a feedback model against human labels: accuracy (both orders) and calibration."""
    from ..stages.evaluate import dumps, run_labeler

    typer.echo(dumps(run_labeler(cfg), per_item=False))


AS_JSON = option_param("as_json", bool, False, "print compare.json, no table", "--json")


@stage_command(eval_app, "compare", CompareConfig, AS_JSON, DRY_RUN)
def eval_compare(cfg: CompareConfig, as_json: bool = False, dry_run: bool = False) -> None:
    """Contestants answer the prompts; the constitution judge compares every pair in both orders."""
    from ..stages.compare import plan_compare, run_compare

    if dry_run:
        show_plan(plan_compare(cfg))
        return
    show_compare(cfg, run_compare(cfg, Bar), as_json)


def show_compare(cfg: CompareConfig, result: dict, as_json: bool = False) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print_tables(result)
    typer.echo(
        f"results: {cfg.out / 'compare.json'}" + (f"\nreport:  {cfg.html}" if cfg.html else "")
    )


def print_tables(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..audit.compare import PAIR_COLUMNS, pair_rows

    t = Table(title=f"against {result['baseline']}: {result['prompts']} prompts")
    for col in PAIR_COLUMNS:
        t.add_column(col)
    for row in pair_rows(result):
        t.add_row(*row)
    console = console or Console()
    console.print(t)
    vs_base = [p for p in result["pairs"] if p["opponent"] == result["baseline"]]
    principles = sorted({pid for p in vs_base for pid in p["per_principle"]})
    if principles:
        t = Table(title="win rate by principle (n = prompts where it was drawn)")
        t.add_column("principle")
        for p in vs_base:
            t.add_column(p["model"])
        for pid in principles:
            cells = []
            for p in vs_base:
                s = p["per_principle"].get(pid)
                cells.append(f"{s['win_rate']:.2f} (n={s['n']})" if s else "-")
            t.add_row(pid, *cells)
        console.print(t)
    skipped = {p["model"]: p["skipped"] for p in result["pairs"] if p["skipped"]}
    for name, why in skipped.items():
        console.print(
            f"{name}: not judged (ties): " + ", ".join(f"{n} {w}" for w, n in why.items())
        )
