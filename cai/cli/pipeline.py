"""`cai validate` and `cai run`: check pipeline files; run one, stage by stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from . import Bar, app, err


@app.command("validate")
def validate_pipelines(
    files: Annotated[list[Path], typer.Argument(help="pipeline YAML files", readable=False)],
) -> None:
    """Check pipeline files; print every problem as FILE:LINE: field: message."""
    from ..pipeline import load_pipeline

    problems = []
    for f in files:
        try:
            load_pipeline(f)
        except ConfigError as error:
            problems += error.problems
    for p in problems:
        err(str(p))
    if problems:
        raise typer.Exit(2)
    typer.echo(f"ok: {len(files)} pipeline(s)")


def show(stage, result: dict) -> None:
    """What the stage's own command prints when it finishes."""
    from .evaluate import show_compare
    from .generate import show_critiques, show_preferences
    from .train import show_training

    shows = {"critiques": show_critiques, "preferences": show_preferences, "compare": show_compare}
    shows.get(stage.stage, show_training)(stage.cfg, result)


def plan_line(plan: dict) -> str:
    """A plan's figures in one line: calls left, prompt tokens, generated ceiling, calls done."""
    done = sum(plan["calls_done"].values())
    text = (
        f"{plan['calls']} model calls, {plan['prompt_tokens']:,} prompt tokens, "
        f"{plan['max_new_tokens_total']:,} generated tokens at most ({done} calls done)"
    )
    guessed = [m for m, how in plan["prompt_tokens_counted_with"].items() if how.startswith("est")]
    return text + (f"; prompt tokens estimated for {', '.join(guessed)}" if guessed else "")


@app.command("run")
def run_pipeline_cmd(
    file: Annotated[Path, typer.Argument(readable=False)],
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="key.sub=value, e.g. critiques.limit=4")
    ] = None,
    force: Annotated[
        Optional[list[str]],
        typer.Option(help="rerun this stage (and the stages that read it) even if it is done"),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="print, per stage, run or skip and why, and what each generating stage that "
            "runs would send (model calls, prompt tokens, generated tokens at most); run nothing",
        ),
    ] = False,
) -> None:
    """Run a pipeline file's stages in order into one run directory, skipping finished ones."""
    from ..pipeline import decide, load_pipeline, run_pipeline

    pipeline = load_pipeline(file, overrides or [])
    if dry_run:
        for d in decide(pipeline, force, plan=True):
            typer.echo(f"{d.stage.name}: {'run' if d.run else 'skip'} ({d.why})")
            if d.plan is not None or d.unplanned:
                typer.echo(f"  plan: {plan_line(d.plan) if d.plan else d.unplanned}")
        return
    report = run_pipeline(pipeline, typer.echo, Bar, show, force)
    typer.echo(f"pipeline {pipeline.name}: " + ", ".join(f"{n} {s}" for n, s in report))
    typer.echo(f"run directory: {pipeline.out}")
