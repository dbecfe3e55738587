"""`cai eval compare`: parse, call the compare stage, print a table (or JSON), write HTML."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import (
    ApiKeyEnvOpt,
    BackendOpt,
    BaseUrlOpt,
    ConcurrencyOpt,
    ConstitutionOpt,
    DtypeOpt,
    EnforceEagerOpt,
    GpuMemoryOpt,
    MaxModelLenOpt,
    PromptsOpt,
    RetryForOpt,
    TensorParallelOpt,
    _err,
    _Progress,
    _versions,
    engine_options,
    eval_app,
    resolve_for,
)
from ..errors import InputError


@eval_app.command("compare")
def eval_compare(
    baseline: Annotated[str, typer.Option(help="the model (or --answers NAME) to compare against")],
    model: Annotated[
        Optional[list[str]],
        typer.Option(help="a contestant: MODEL or NAME=MODEL (any model name cai takes)"),
    ] = None,
    answers: Annotated[
        Optional[list[str]],
        typer.Option(help="a contestant's answers from elsewhere: NAME=FILE (JSONL: id, answer)"),
    ] = None,
    prompts: PromptsOpt = "red-team",
    constitution: ConstitutionOpt = "harmless",
    judge: Annotated[str, typer.Option(help="the model that judges")] = "default",
    ensemble: Annotated[int, typer.Option(help="principles per prompt and pair (E)")] = 4,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per answer at most")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding")] = 0.0,
    seed: Annotated[int, typer.Option(help="seeds principle draws, sampling, bootstrap")] = 0,
    tie_margin: Annotated[
        float, typer.Option(help="a win needs mean P(better) above 0.5 + this")
    ] = 0.0,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples for the intervals")] = 1000,
    limit: Annotated[Optional[int], typer.Option(help="only the first N prompts")] = None,
    out: Annotated[Path, typer.Option(help="run directory (caches answers and judgements)")] = Path(
        "runs/compare"
    ),
    backend: BackendOpt = "auto",
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    retry_for: RetryForOpt = 300.0,
    batch_size: Annotated[
        int, typer.Option(help="hf: rows per forward pass at most (fewer if memory is short)")
    ] = 64,
    dtype: DtypeOpt = "auto",
    gpu_memory_utilization: GpuMemoryOpt = None,
    tensor_parallel_size: TensorParallelOpt = 1,
    max_model_len: MaxModelLenOpt = None,
    enforce_eager: EnforceEagerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print compare.json, no table")] = False,
    html: Annotated[Optional[Path], typer.Option(help="also write an HTML report here")] = None,
) -> None:
    """Contestants answer the prompts; the constitution judge compares every pair in both orders."""
    from ..backends import Sampling, make_backend, pick_backend
    from ..constitution import load_constitution
    from ..inputs import load_prompts
    from ..stages.compare import CompareSettings, compare, contestants, load_answers
    from ..store import RunDir, write_atomic

    if ensemble < 1 or max_new_tokens < 1 or resamples < 1:
        raise InputError("--ensemble, --max-new-tokens and --resamples must be at least 1")
    if temperature < 0 or not 0 <= tie_margin < 0.5:
        raise InputError("--temperature must be >= 0 and --tie-margin in [0, 0.5)")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1 (got {limit})")
    chosen = pick_backend(backend)
    cons = load_constitution(constitution)
    items = load_prompts(prompts, limit)
    players = contestants(model or [], answers or [], baseline, served=chosen == "openai")
    for c in players:
        if c.kind == "answers":
            load_answers(Path(c.source), items)  # a bad file fails before any model loads
    settings = CompareSettings(
        judge=resolve_for(chosen, judge).path,
        ensemble=ensemble,
        sampling=Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
        seed=seed,
        tie_margin=tie_margin,
        resamples=resamples,
    )
    options = engine_options(
        chosen,
        batch_size=batch_size,
        base_url=base_url,
        api_key_env=api_key_env,
        concurrency=concurrency,
        retry_for=retry_for,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        enforce_eager=enforce_eager,
    )

    def progress(what: str, total: int) -> _Progress:
        bar = _Progress(what)
        if total:
            bar.start(total)
        return bar

    with RunDir(out) as run:
        run.check_settings(settings.cache_settings(cons))
        manifest = {
            "settings": settings.cache_settings(cons),
            "status": "running",
            "contestants": [c.__dict__ for c in players],
            "prompts": prompts,
            "backend": chosen,
            "versions": _versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        run.write_manifest(manifest)
        try:
            result = compare(
                cons,
                items,
                players,
                settings,
                run,
                lambda spec: make_backend(chosen, spec, **options),
                progress,
            )
        except KeyboardInterrupt:
            _err(f"interrupted: finished work is kept in {out}; run the same command to resume")
            raise typer.Exit(130) from None
        text = json.dumps(result, indent=2, ensure_ascii=False)
        write_atomic(out / "compare.json", text + "\n")
        manifest.update(
            {"status": "complete", "counts": result["counts"], "finished": time.strftime("%c")}
        )
        run.write_manifest(manifest)
    if html:
        from ..stages.compare_html import html_report

        write_atomic(html, html_report(result))
    if as_json:
        typer.echo(text)
        return
    print_tables(result)
    typer.echo(f"results: {out / 'compare.json'}" + (f"\nreport:  {html}" if html else ""))


def print_tables(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..stages.compare_html import PAIR_COLUMNS, pair_rows

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
