"""`cai validate` and `cai run`: check pipeline files; run one, stage by stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from . import Bar, app, err


@app.command("validate")
def validate_pipelines(
    files: Annotated[list[Path], typer.Argument(help="pipeline YAML files")],
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


@app.command("run")
def run_pipeline_cmd(
    file: Path,
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="key.sub=value, e.g. critiques.limit=4")
    ] = None,
    force: Annotated[
        Optional[list[str]],
        typer.Option(help="rerun this stage (and the stages that read it) even if it is done"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print, per stage, run or skip and why; run nothing")
    ] = False,
) -> None:
    """Run a pipeline file's stages in order into one run directory, skipping finished ones."""
    from ..pipeline import decide, load_pipeline, run_pipeline

    pipeline = load_pipeline(file, overrides or [])
    if dry_run:
        for d in decide(pipeline, force):
            typer.echo(f"{d.stage.name}: {'run' if d.run else 'skip'} ({d.why})")
        return
    report = run_pipeline(pipeline, typer.echo, Bar, show, force)
    typer.echo(f"pipeline {pipeline.name}: " + ", ".join(f"{n} {s}" for n, s in report))
    typer.echo(f"run directory: {pipeline.out}")
