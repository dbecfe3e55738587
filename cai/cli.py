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

from .errors import CaiError, ConfigError, InputError

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
        from . import __version__

        typer.echo(f"cai {__version__}")
        raise typer.Exit()


ConstitutionOpt = Annotated[
    str, typer.Option(help="constitution YAML, or a shipped name: harmless, helpful-harmless, ...")
]


def _err(text: str) -> None:
    typer.echo(text, err=True)


# ---------------------------------------------------------------- constitutions


@constitution_app.command("validate")
def constitution_validate(files: Annotated[list[Path], typer.Argument(help="YAML files")]) -> None:
    """Check constitution files; print every problem as FILE:LINE: field: message."""
    from .constitution import validate_files

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
    from .constitution import load_constitution

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
    from .constitution import load_constitution
    from .constitution_import import convert
    from .store import write_atomic

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
    for pkg in ("cai", "torch", "transformers", "trl", "vllm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@generate_app.command("critiques")
def generate_critiques(
    constitution: ConstitutionOpt = "harmless",
    prompts: Annotated[
        str, typer.Option(help=".jsonl/.csv/.parquet/.txt, or red-team | helpful")
    ] = "red-team",
    model: Annotated[
        str, typer.Option(help="default | a model folder | a .gguf file | org/name")
    ] = "default",
    rounds: Annotated[int, typer.Option(help="critique-revision rounds per prompt")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per generated text at most")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass")] = 1.0,
    repetition_penalty: Annotated[
        float, typer.Option(help="> 1 discourages repeated tokens (1 = off)")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="seeds principle draws and sampling")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="only the first N prompts")] = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/critiques"),
    backend: Annotated[str, typer.Option(help="auto | hf | vllm")] = "auto",
    batch_size: Annotated[int, typer.Option(help="hf: sequences per forward pass at most")] = 32,
    chunk_size: Annotated[
        Optional[int],
        typer.Option(
            help="prompts per backend call (a kill loses at most one call); default: the engine's"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan; load no model")
    ] = False,
) -> None:
    """SL-CAI: answer each prompt, then critique and revise it for N rounds."""
    from .backends import Sampling, make_backend, pick_backend
    from .constitution import load_constitution
    from .inputs import load_prompts
    from .models import resolve_model
    from .stages.critique import CritiqueSettings, critique_revise, plan
    from .store import RunDir

    if rounds < 1:
        raise InputError(f"--rounds must be at least 1 (got {rounds})")
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    if temperature < 0 or not 0 < top_p <= 1 or repetition_penalty <= 0:
        raise InputError("--temperature must be >= 0, --top-p in (0, 1], --repetition-penalty > 0")
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1 (got {chunk_size})")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1 (got {limit})")
    chosen_backend = pick_backend(backend)
    cons = load_constitution(constitution)
    items = load_prompts(prompts, limit)
    sampling = Sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        repetition_penalty=repetition_penalty,
    )
    if dry_run:
        info = plan(cons, items, rounds, max_new_tokens)
        typer.echo(
            json.dumps(
                {
                    "plan": info,
                    "settings": {
                        "constitution": cons.info(),
                        "prompts": prompts,
                        "model": model,
                        "backend": chosen_backend,
                        "rounds": rounds,
                        "sampling": sampling.as_dict(),
                        "seed": seed,
                        "out": str(out),
                    },
                },
                indent=2,
            )
        )
        for item in items[:5]:
            typer.echo(f"  {item.id}: {item.messages[-1][1][:100]!r}")
        if len(items) > 5:
            typer.echo(f"  ... and {len(items) - 5} more")
        return
    resolved = resolve_model(model)
    settings = CritiqueSettings(model=resolved.label, rounds=rounds, sampling=sampling, seed=seed)
    manifest_settings = {"stage": "critiques", **settings.as_dict(), "constitution_hash": cons.hash}
    with RunDir(out) as run:
        run.check_settings(manifest_settings)
        t0 = time.perf_counter()
        options = {"max_batch_size": batch_size} if chosen_backend == "hf" else {}
        if chunk_size:
            options["chunk_size"] = chunk_size
        engine = make_backend(chosen_backend, model, **options)
        load_s = time.perf_counter() - t0
        manifest = {
            "settings": manifest_settings,
            "status": "running",
            "constitution": cons.info(),
            "prompts": prompts,
            "model_path": resolved.path,
            "backend": engine.name,
            "versions": _versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        run.write_manifest(manifest)
        progress = _Progress()
        try:
            summary = critique_revise(cons, items, engine, run, settings, progress)
        except KeyboardInterrupt:
            progress.stop()
            done = sum(1 for _ in run.log("critiques.jsonl").read())
            _err(
                f"interrupted: {done} finished prompt(s) are kept in {out}; "
                "run the same command again to resume"
            )
            raise typer.Exit(130) from None
        progress.stop()
        summary["model_load_seconds"] = round(load_s, 3)
        manifest.update(
            {
                "status": "complete",
                "counts": summary,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        run.write_manifest(manifest)
    typer.echo(
        f"done: {summary['records']} prompts ({summary['resumed_from']} already done), "
        f"{summary['generated_tokens_now']} tokens generated"
        + (f" at {summary['tokens_per_second']} tok/s" if summary["tokens_per_second"] else "")
    )
    if summary["dropped_empty"] or summary["empty_revisions"]:
        typer.echo(
            f"note: {summary['empty_revisions']} empty revision(s) kept the previous answer; "
            f"{summary['dropped_empty']} prompt(s) left out of the SFT data (no answer)"
        )
    typer.echo(f"critique log: {out / 'critiques.jsonl'}")
    typer.echo(f"SFT data:     {out / 'sft.jsonl'} ({summary['sft_rows']} rows)")
    typer.echo(f"manifest:     {out / 'manifest.json'}")


def _clamp(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--clamp takes LO,HI such as 0.4,0.6 (got {text!r})") from None
    if not 0 <= lo < hi <= 1:
        raise InputError(f"--clamp needs 0 <= LO < HI <= 1 (got {text!r})")
    return lo, hi


@generate_app.command("preferences")
def generate_preferences(
    constitution: ConstitutionOpt = "harmless",
    prompts: Annotated[str, typer.Option(help="prompts file or shipped set")] = "red-team",
    pairs: Annotated[
        Optional[str], typer.Option(help="label these pairs (JSONL) instead of sampling")
    ] = None,
    policy: Annotated[str, typer.Option(help="model that writes the answers")] = "default",
    feedback: Annotated[str, typer.Option(help="model that judges them")] = "default",
    samples: Annotated[
        int, typer.Option(help="answers per prompt (K >= 2); every pair judged")
    ] = 2,
    ensemble: Annotated[int, typer.Option(help="principles per pair (E)")] = 4,
    cot: Annotated[
        bool, typer.Option("--cot", help="reason first, then score the options")
    ] = False,
    clamp: Annotated[
        Optional[str],
        typer.Option(help="clamp each probability to LO,HI (default 0.4,0.6 with --cot)"),
    ] = None,
    min_margin: Annotated[float, typer.Option(help="leave out pairs with |2p-1| below this")] = 0.0,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per answer (and CoT) at most")] = 128,
    temperature: Annotated[float, typer.Option(help="policy sampling temperature (> 0)")] = 0.8,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass")] = 0.95,
    seed: Annotated[int, typer.Option(help="seeds principle draws and sampling")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="only the first N prompts or pairs")] = None,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/preferences"),
    backend: Annotated[str, typer.Option(help="auto | hf | vllm")] = "auto",
    batch_size: Annotated[int, typer.Option(help="hf: sequences per forward pass at most")] = 32,
) -> None:
    """RL-CAI: soft preference labels from option log-probs, both orders, over E principles."""
    from .backends import Sampling, make_backend, pick_backend
    from .constitution import load_constitution
    from .inputs import load_pairs, load_prompts
    from .models import resolve_model
    from .stages.preferences import LabelSettings, Pair, judge_pairs, policy_samples, sample_pairs
    from .store import RunDir, key

    if samples < 2 and pairs is None:
        raise InputError(f"--samples must be at least 2 (got {samples})")
    if ensemble < 1 or max_new_tokens < 1:
        raise InputError("--ensemble and --max-new-tokens must be at least 1")
    if pairs is None and temperature <= 0:
        raise InputError("--temperature must be > 0 so that the policy's samples differ")
    if not 0 <= min_margin <= 1:
        raise InputError(f"--min-margin must be in [0, 1] (got {min_margin})")
    bounds = _clamp(clamp) or ((0.4, 0.6) if cot else None)
    chosen_backend = pick_backend(backend)
    cons = load_constitution(constitution)
    if pairs is not None:
        rows = load_pairs(pairs)[:limit]
        pair_list = [Pair(i, key("pair", m, a, b), m, a, b) for i, m, a, b in rows]
        items = []
    else:
        items = load_prompts(prompts, limit)
    judge = resolve_model(feedback)
    settings = LabelSettings(
        feedback=judge.label,
        ensemble=ensemble,
        seed=seed,
        cot=cot,
        clamp=bounds,
        cot_sampling=Sampling(max_new_tokens=max_new_tokens),
    )
    sampling = Sampling(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    run_settings = {
        "stage": "preferences",
        **settings.as_dict(),
        "constitution_hash": cons.hash,
        "policy": None if pairs else resolve_model(policy).label,
        "samples": None if pairs else samples,
        "sampling": None if pairs else sampling.as_dict(),
    }
    options = {"max_batch_size": batch_size} if chosen_backend == "hf" else {}
    with RunDir(out) as run:
        run.check_settings(run_settings)
        judge_engine = make_backend(chosen_backend, feedback, **options)
        manifest = {
            "settings": run_settings,
            "status": "running",
            "constitution": cons.info(),
            "prompts": pairs or prompts,
            "backend": judge_engine.name,
            "versions": _versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        run.write_manifest(manifest)
        try:
            if pairs is None:
                same = resolve_model(policy).path == judge.path
                policy_engine = (
                    judge_engine if same else make_backend(chosen_backend, policy, **options)
                )
                progress = _Progress("policy samples")
                progress.start(len(items))
                answers, keys = policy_samples(
                    items, policy_engine, run, samples, sampling, progress
                )
                progress.stop()
                pair_list = sample_pairs(items, answers, keys)
            progress = _Progress("judgements")
            summary = judge_pairs(
                cons, pair_list, judge_engine, run, settings, progress, min_margin
            )
            progress.stop()
        except KeyboardInterrupt:
            _err(
                f"interrupted: finished labels are kept in {out}; "
                "run the same command again to resume"
            )
            raise typer.Exit(130) from None
        manifest.update(
            {
                "status": "complete",
                "counts": summary,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        run.write_manifest(manifest)
    typer.echo(
        f"done: {summary['labelled']} of {summary['pairs']} pairs labelled, "
        f"{summary['kept']} kept (min margin {min_margin})"
    )
    if summary["skipped"]:
        typer.echo("skipped: " + ", ".join(f"{n} {why}" for why, n in summary["skipped"].items()))
    typer.echo(
        f"position consistency {summary['position_consistency']}, "
        f"mean |p-0.5| {summary['mean_abs_p_minus_half']}, "
        f"principle agreement {summary['principle_agreement']}, "
        f"longer answer chosen {summary['longer_chosen_share']} "
        f"(p={summary['longer_chosen_p_value']})"
    )
    typer.echo(f"labels:      {out / 'labels.jsonl'}")
    typer.echo(f"preferences: {out / 'preferences.jsonl'}")


@eval_app.command("labeler")
def eval_labeler(
    data: Annotated[Path, typer.Option(help="JSONL: corrects/incorrects or chosen/rejected")],
    model: Annotated[str, typer.Option(help="the feedback model to measure")] = "default",
    constitution: ConstitutionOpt = "harmless",
    limit: Annotated[Optional[int], typer.Option(help="only the first N items")] = None,
    backend: Annotated[str, typer.Option(help="auto | hf | vllm")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="also write the result as JSON here")] = None,
) -> None:
    """Score a feedback model against human labels: accuracy (both orders) and calibration."""
    from .backends import make_backend, pick_backend
    from .constitution import load_constitution
    from .stages.evaluate import dumps, evaluate_labeler, load_eval
    from .store import write_atomic

    cons = load_constitution(constitution)
    load_eval(data)  # bad data fails before a model loads
    result = evaluate_labeler(data, make_backend(pick_backend(backend), model), cons, limit)
    text = dumps(result)
    if out:
        write_atomic(out, text + "\n")
    typer.echo(text)


@data_app.command("import-hh")
def data_import_hh(
    file: Path,
    out: Annotated[Path, typer.Option(help="where to write the preference JSONL")],
) -> None:
    """Convert Human:/Assistant: transcript pairs (chosen/rejected) to cai's preference format."""
    from .hh import import_hh, write_preferences

    records, problems = import_hh(file)
    write_preferences(records, out)
    for p in problems:
        _err(f"skipped {p}")
    typer.echo(f"wrote {out}: {len(records)} pairs ({len(problems)} line(s) skipped)")


def _train_settings(model, out, lr, epochs, max_steps, batch_size, seed, lora, resume):
    from .train import TrainSettings

    if lr <= 0 or epochs <= 0 or batch_size < 1 or max_steps == 0 or max_steps < -1:
        raise InputError(
            "--lr and --epochs must be > 0, --batch-size >= 1, --max-steps >= 1 "
            "(or -1 for all epochs)"
        )
    return TrainSettings(
        model=model,
        out=out,
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        lora=lora,
        resume=resume,
    )


ModelOpt = Annotated[str, typer.Option(help="default | a model folder | a .gguf file | org/name")]
LrOpt = Annotated[float, typer.Option(help="learning rate")]
EpochsOpt = Annotated[float, typer.Option(help="epochs over the data")]
StepsOpt = Annotated[int, typer.Option(help="stop after N optimizer steps (-1: epochs decide)")]
BatchOpt = Annotated[int, typer.Option(help="examples per device per step")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
LoraOpt = Annotated[bool, typer.Option("--lora", help="train LoRA adapters (peft)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint")]


@train_app.command("sft")
def train_sft_cmd(
    data: Annotated[Path, typer.Option(help="sft.jsonl from `cai generate critiques`")],
    out: Annotated[Path, typer.Option(help="where the trained model goes")],
    model: ModelOpt = "default",
    lr: LrOpt = 2e-5,
    epochs: EpochsOpt = 1.0,
    max_steps: StepsOpt = -1,
    batch_size: BatchOpt = 4,
    seed: SeedOpt = 0,
    lora: LoraOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Supervised fine-tuning on the revisions (loss on the assistant's answer only)."""
    from .train.sft import train_sft

    settings = _train_settings(model, out, lr, epochs, max_steps, batch_size, seed, lora, resume)
    result = train_sft(data, settings)
    typer.echo(json.dumps(result))
    typer.echo(f"model: {out}\nmetrics: {out / 'metrics.jsonl'}")


@train_app.command("rm")
def train_rm_cmd(
    data: Annotated[Path, typer.Option(help="preferences.jsonl (soft labels in p_chosen)")],
    out: Annotated[Path, typer.Option(help="where the reward model goes")],
    model: ModelOpt = "default",
    lr: LrOpt = 1e-5,
    epochs: EpochsOpt = 1.0,
    max_steps: StepsOpt = -1,
    batch_size: BatchOpt = 4,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
) -> None:
    """A reward model fit to the soft labels; reports held-out accuracy and calibration."""
    from .train.rm import train_rm

    settings = _train_settings(model, out, lr, epochs, max_steps, batch_size, seed, False, resume)
    result = train_rm(data, settings)
    typer.echo(json.dumps(result))
    typer.echo(f"reward model: {out}\nmetrics: {out / 'metrics.jsonl'}")


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
    from .constitution import load_constitution
    from .inputs import load_prompts
    from .stages.critique import build_chat

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
        from .backends import make_backend

        typer.echo(make_backend("hf", model).render(messages))
        return
    for m in messages:
        typer.echo(f"--- {m['role']}\n{m['content']}")
    typer.echo("--- assistant (generated)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cai`` script; ``argv`` defaults to ``sys.argv[1:]``."""
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
