"""`cai data import-hh`: convert published preference transcripts to cai's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import data_app, err


@data_app.command("import-hh")
def data_import_hh(
    file: Annotated[Path, typer.Argument(readable=False)],
    out: Annotated[Path, typer.Option(help="where to write the preference JSONL")],
) -> None:
    """Convert Human:/Assistant: transcript pairs (chosen/rejected) to cai's preference format."""
    from ..hh import import_hh, write_preferences

    records, problems = import_hh(file)
    write_preferences(records, out)
    for p in problems:
        err(f"skipped {p}")
    typer.echo(f"wrote {out}: {len(records)} pairs ({len(problems)} line(s) skipped)")
