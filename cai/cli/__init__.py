"""The ``cai`` command line: parse, call the library, print.

This is the one place that turns a :class:`~cai.errors.CaiError` into a message on stderr and an
exit code (2 for bad input, 130 for Ctrl-C). Nothing below ``cai/`` prints or exits.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import CaiError, ConfigError, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Constitutional AI and RLAIF.",
)
constitution_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Validate, show and import constitutions."
)
generate_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Generate training data from a constitution."
)
app.add_typer(constitution_app, name="constitution")
app.add_typer(generate_app, name="generate")
eval_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Evaluate models and judges."
)
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Convert data sets.")
app.add_typer(eval_app, name="eval")
app.add_typer(data_app, name="data")
train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Train with TRL.")
app.add_typer(train_app, name="train")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit")] = False,
) -> None:
    if version:
        from .. import __version__

        typer.echo(f"cai {__version__}")
        raise typer.Exit()


ARGV: list[str] = []  # this invocation's arguments, for relaunching under accelerate

ModelOpt = Annotated[str, typer.Option(help="default | a model folder | a .gguf file | org/name")]
PromptsOpt = Annotated[str, typer.Option(help=".jsonl/.csv/.parquet/.txt, or red-team | helpful")]
ConstitutionOpt = Annotated[
    str, typer.Option(help="constitution YAML, or a shipped name: harmless, helpful-harmless, ...")
]
BackendOpt = Annotated[
    str, typer.Option(help="auto | hf | vllm | openai (OpenAI-compatible servers, --base-url)")
]
BaseUrlOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--base-url",
        help="openai: a server's base URL such as http://host:8000/v1; repeat for many servers",
    ),
]
ApiKeyEnvOpt = Annotated[
    Optional[str],
    typer.Option(
        help="openai: the environment variable holding the API key (default: OPENAI_API_KEY "
        "when it is set); the key itself is never written anywhere"
    ),
]
ConcurrencyOpt = Annotated[int, typer.Option(help="openai: requests in flight per server at most")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="hf, vllm: auto | float32 | bfloat16 (hf auto: bfloat16 where the CPU computes it "
        "natively, else float32)"
    ),
]
GpuMemoryOpt = Annotated[
    Optional[float],
    typer.Option(
        help="vllm: share of the device's memory to reserve (on a CPU, of its NUMA node's); "
        "default: 85% of what the GPU has free, on a CPU a KV cache of 30% of the memory free"
    ),
]
TensorParallelOpt = Annotated[int, typer.Option(help="vllm: GPUs per model (tensor parallel)")]
MaxModelLenOpt = Annotated[
    Optional[int], typer.Option(help="vllm: context length at most (default: the model's)")
]
EnforceEagerOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--enforce-eager/--no-enforce-eager",
        help="vllm: run the model without compiling it (default: on a CPU yes, on a GPU no)",
    ),
]
RetryForOpt = Annotated[
    float,
    typer.Option(help="openai: stop (exit 3, resumable) after this many seconds with no answer"),
]


def resolve_for(backend: str, model: str):
    """The model a stage records: for ``openai`` the name the servers use, else resolved locally."""
    from ..models import ResolvedModel, resolve_model

    if backend != "openai":
        return resolve_model(model)
    if model == "default":
        raise InputError(
            "--backend openai: give --model as the servers name it (the name `vllm serve` was "
            "given, or its --served-model-name)"
        )
    return ResolvedModel(model, model)


def engine_options(
    backend: str,
    *,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    base_url: list[str] | None = None,
    api_key_env: str | None = None,
    concurrency: int = 8,
    retry_for: float = 300.0,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    enforce_eager: bool | None = None,
) -> dict:
    """Keyword arguments of ``make_backend`` for the chosen engine."""
    import os

    from ..backends.hf import DTYPES

    options: dict = {"chunk_size": chunk_size} if chunk_size else {}
    if backend == "hf" and batch_size:
        options["max_batch_size"] = batch_size
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        if backend == "openai":
            raise InputError("--dtype is for --backend hf or vllm (the servers choose their own)")
        options["dtype"] = dtype
    if backend == "openai":
        if api_key_env is None and os.environ.get("OPENAI_API_KEY"):
            api_key_env = "OPENAI_API_KEY"
        options.update(
            base_urls=list(base_url or []),
            api_key_env=api_key_env,
            concurrency=concurrency,
            retry_for=retry_for,
        )
    elif base_url:
        raise InputError(f"--base-url is for --backend openai (the backend is {backend})")
    vllm_only = {
        "--gpu-memory-utilization": gpu_memory_utilization is not None,
        "--tensor-parallel-size": tensor_parallel_size != 1,
        "--max-model-len": max_model_len is not None,
        "--enforce-eager": enforce_eager is not None,
    }
    given = [flag for flag, set_ in vllm_only.items() if set_]
    if backend != "vllm":
        if given:
            raise InputError(f"{given[0]} is for --backend vllm (the backend is {backend})")
        return options
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise InputError(
            f"--gpu-memory-utilization must be in (0, 1] (got {gpu_memory_utilization})"
        )
    if tensor_parallel_size < 1 or (max_model_len is not None and max_model_len < 1):
        raise InputError("--tensor-parallel-size and --max-model-len must be at least 1")
    options.update(
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        enforce_eager=enforce_eager,
    )
    return options


def engine_record(engine) -> dict:
    """What a manifest records about a loaded engine: name, dtype, device and its options."""
    info = engine.info() if hasattr(engine, "info") else {}
    return {"backend": engine.name, "dtype": getattr(engine, "dtype", None), **info}


def _err(text: str) -> None:
    typer.echo(text, err=True)


# ---------------------------------------------------------------- constitutions


@constitution_app.command("validate")
def constitution_validate(files: Annotated[list[Path], typer.Argument(help="YAML files")]) -> None:
    """Check constitution files; print every problem as FILE:LINE: field: message."""
    from ..constitution import validate_files

    good, problems = validate_files(files)
    for p in problems:
        _err(str(p))
    if problems:
        raise typer.Exit(2)
    total = sum(len(c.principles) for c in good)
    typer.echo(
        f"ok: {len(good)} constitution(s), {total} principles "
        f"({', '.join(f'{c.name} {c.hash[:8]}' for c in good)})"
    )


@constitution_app.command("show")
def constitution_show(
    file: Path,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the resolved constitution as JSON")
    ] = False,
) -> None:
    """Print the resolved constitution (with `extends` merged)."""
    from ..constitution import load_constitution

    c = load_constitution(file)
    if as_json:
        typer.echo(
            json.dumps(
                {**c.to_dict(), "hash": c.hash, "files": list(c.files)},
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    typer.echo(f"{c.name} v{c.version}  hash {c.hash}  from {' <- '.join(reversed(c.files))}")
    if c.description:
        typer.echo(f"\n{c.description}")
    total = sum(p.weight for p in c.principles)
    typer.echo(f"\n{len(c.principles)} principles:")
    for p in c.principles:
        tags = f"  [{', '.join(p.tags)}]" if p.tags else ""
        typer.echo(f"\n  {p.id}  (weight {p.weight:g}, drawn {p.weight / total:.0%}){tags}")
        typer.echo(f"    critique: {p.critique.strip()}")
        typer.echo(f"    revision: {p.revision.strip()}")
        typer.echo(f"    compare:  {p.compare.strip()}")
    typer.echo(
        f"\nfew-shot: {len(c.few_shot.critique)} critique/revision, "
        f"{len(c.few_shot.compare)} comparison example(s)"
    )


@constitution_app.command("import")
def constitution_import(
    file: Path,
    fmt: Annotated[str, typer.Option("--format", help="anthropic | hf")],
    out: Annotated[Path, typer.Option(help="where to write the YAML")],
    compare: Annotated[
        Optional[Path], typer.Option(help="anthropic: JSON list of comparison principles")
    ] = None,
    few_shot: Annotated[
        Optional[Path], typer.Option(help="anthropic: JSON list of few-shot transcripts")
    ] = None,
    name: Annotated[Optional[str], typer.Option(help="name of the new constitution")] = None,
) -> None:
    """Convert a published constitution file to cai's YAML."""
    from ..constitution import load_constitution
    from ..constitution_import import convert
    from ..store import write_atomic

    text, generic = convert(file, fmt, compare, few_shot, name)
    write_atomic(out, text)
    c = load_constitution(out)
    typer.echo(f"wrote {out}: {len(c.principles)} principles, {len(c.few_shot.critique)} few-shot")
    if generic:
        _err("note: the source has no comparison questions; each `compare` is a generic question")


# ---------------------------------------------------------------- critiques


class _Progress:
    """A rich progress bar on stderr: model calls done, ETA and generated tokens per second."""

    def __init__(self, what: str = "model calls") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.what = what
        self.task = None
        self.tokens = 0
        self.t0 = time.perf_counter()

    def start(self, total_calls: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(self.what, total=total_calls, rate="-")

    def advance(self, calls: int, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, advance=calls, rate=f"{rate:.1f}")

    def stop(self) -> None:
        self.bar.stop()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("cai", "torch", "transformers", "trl"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    from ..backends.vllm import vllm_version

    if vllm_version():
        out["vllm"] = vllm_version()
    return out


@app.command("show-prompt")
def show_prompt(
    constitution: ConstitutionOpt = "harmless",
    prompt: Annotated[Optional[str], typer.Option(help="the user's prompt text")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="or a prompts file / shipped set")] = None,
    index: Annotated[int, typer.Option(help="with --prompts: which prompt (0-based)")] = 0,
    step: Annotated[str, typer.Option(help="response | critique | revision")] = "critique",
    principle: Annotated[
        Optional[str], typer.Option(help="principle id (default: the first)")
    ] = None,
    round: Annotated[int, typer.Option(help="round number")] = 1,
    answer: Annotated[
        str, typer.Option(help="the answer being critiqued")
    ] = "<the model's latest answer>",
    critique: Annotated[
        str, typer.Option(help="the critique (revision step)")
    ] = "<the model's critique>",
    model: Annotated[
        Optional[str], typer.Option(help="also apply this model's chat template")
    ] = None,
) -> None:
    """Print the exact chat a model sees for one step of the critique-revision loop."""
    from ..constitution import load_constitution
    from ..inputs import load_prompts
    from ..stages.critique import build_chat

    if step not in ("response", "critique", "revision"):
        raise InputError(f"--step must be response, critique or revision (got {step!r})")
    cons = load_constitution(constitution)
    if prompt is not None:
        chat = [{"role": "user", "content": prompt}]
    else:
        items = load_prompts(prompts or "red-team")
        if not 0 <= index < len(items):
            raise InputError(f"--index {index} is out of range (0..{len(items) - 1})")
        chat = items[index].chat
    try:
        p = cons.principle(principle) if principle else cons.principles[0]
    except KeyError:
        raise InputError(f"no principle {principle!r} in {cons.name}") from None
    messages = build_chat(
        cons, chat, step, principle=p, answer=answer, critique=critique, round=round
    )
    if model:
        from ..backends import make_backend

        typer.echo(make_backend("hf", model).render(messages))
        return
    for m in messages:
        typer.echo(f"--- {m['role']}\n{m['content']}")
    typer.echo("--- assistant (generated)")


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
        except ConfigError as err:
            problems += err.problems
    for p in problems:
        _err(str(p))
    if problems:
        raise typer.Exit(2)
    typer.echo(f"ok: {len(files)} pipeline(s)")


@app.command("run")
def run_pipeline_cmd(
    file: Path,
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="key.sub=value, e.g. critiques.limit=4")
    ] = None,
) -> None:
    """Run a pipeline file's stages in order into one run directory, skipping finished ones."""
    from ..pipeline import load_pipeline, run_pipeline

    pipeline = load_pipeline(file, overrides or [])
    report = run_pipeline(pipeline, typer.echo)
    typer.echo(f"pipeline {pipeline['name']}: " + ", ".join(f"{n} {s}" for n, s in report))
    typer.echo(f"run directory: {pipeline['out']}")


# The command groups live in their own modules; importing them registers their commands.
from . import audit, evaluate, generate, train  # noqa: E402, F401


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cai`` script; ``argv`` defaults to ``sys.argv[1:]``."""
    global ARGV
    ARGV = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=argv, prog_name="cai", standalone_mode=True)
    except ConfigError as err:
        _err(str(err))  # already one FILE:LINE: field: message line per problem
        sys.exit(err.exit_code)
    except CaiError as err:
        _err(f"error: {err}")
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
