"""`cai train ...`, `cai eval labeler` and `cai data import-hh`: parse, call the library, print."""

from __future__ import annotations

import json
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
    ModelOpt,
    PromptsOpt,
    RetryForOpt,
    TensorParallelOpt,
    _err,
    data_app,
    engine_options,
    engine_record,
    eval_app,
    train_app,
)
from ..errors import InputError


@eval_app.command("labeler")
def eval_labeler(
    data: Annotated[Path, typer.Option(help="JSONL: corrects/incorrects or chosen/rejected")],
    model: Annotated[str, typer.Option(help="the feedback model to measure")] = "default",
    constitution: ConstitutionOpt = "harmless",
    limit: Annotated[Optional[int], typer.Option(help="only the first N items")] = None,
    backend: BackendOpt = "auto",
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    retry_for: RetryForOpt = 300.0,
    dtype: DtypeOpt = "auto",
    gpu_memory_utilization: GpuMemoryOpt = None,
    tensor_parallel_size: TensorParallelOpt = 1,
    max_model_len: MaxModelLenOpt = None,
    enforce_eager: EnforceEagerOpt = None,
    out: Annotated[
        Optional[Path], typer.Option(help="also write the result, item by item, as JSON here")
    ] = None,
) -> None:
    """Score a feedback model against human labels: accuracy (both orders) and calibration."""
    from ..backends import make_backend, pick_backend
    from ..constitution import load_constitution
    from ..stages.evaluate import dumps, evaluate_labeler, load_eval
    from ..store import write_atomic

    cons = load_constitution(constitution)
    load_eval(data)  # bad data fails before a model loads
    chosen = pick_backend(backend)
    options = engine_options(
        chosen,
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
    engine = make_backend(chosen, model, **options)
    result = {**evaluate_labeler(data, engine, cons, limit), "engine": engine_record(engine)}
    if out:
        write_atomic(out, dumps(result) + "\n")
    typer.echo(dumps(result, per_item=False))


@data_app.command("import-hh")
def data_import_hh(
    file: Path,
    out: Annotated[Path, typer.Option(help="where to write the preference JSONL")],
) -> None:
    """Convert Human:/Assistant: transcript pairs (chosen/rejected) to cai's preference format."""
    from ..hh import import_hh, write_preferences

    records, problems = import_hh(file)
    write_preferences(records, out)
    for p in problems:
        _err(f"skipped {p}")
    typer.echo(f"wrote {out}: {len(records)} pairs ({len(problems)} line(s) skipped)")


AccelerateOpt = Annotated[
    Optional[Path],
    typer.Option(help="run this same command under `accelerate launch --config_file FILE`"),
]


def relaunch_under_accelerate(config: Path | None) -> None:
    """With ``--accelerate-config``, run this command again under ``accelerate launch``.

    The config (DDP, FSDP, DeepSpeed ZeRO, number of processes) is accelerate's own; cai passes it
    through unchanged and exits with the launched run's exit code.
    """
    import os
    import subprocess
    import sys

    from .. import cli

    if config is None or os.environ.get("CAI_UNDER_ACCELERATE") == "1":
        return
    if not config.is_file():
        raise InputError(f"{config}: accelerate config file not found")
    args, skip = [], False
    for a in cli.ARGV:
        if skip:
            skip = False
        elif a == "--accelerate-config":
            skip = True
        elif not a.startswith("--accelerate-config="):
            args.append(a)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "-m",
        "cai",
        *args,
    ]
    code = subprocess.call(cmd, env={**os.environ, "CAI_UNDER_ACCELERATE": "1"})
    raise typer.Exit(code)


def _train_settings(model, out, lr, epochs, max_steps, batch_size, seed, lora, resume):
    from ..train import TrainSettings

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
    accelerate_config: AccelerateOpt = None,
) -> None:
    """Supervised fine-tuning on the revisions (loss on the assistant's answer only)."""
    from ..train.sft import train_sft

    settings = _train_settings(model, out, lr, epochs, max_steps, batch_size, seed, lora, resume)
    relaunch_under_accelerate(accelerate_config)
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
    accelerate_config: AccelerateOpt = None,
) -> None:
    """A reward model fit to the soft labels; reports held-out accuracy and calibration."""
    from ..train.rm import train_rm

    settings = _train_settings(model, out, lr, epochs, max_steps, batch_size, seed, False, resume)
    relaunch_under_accelerate(accelerate_config)
    result = train_rm(data, settings)
    typer.echo(json.dumps(result))
    typer.echo(f"reward model: {out}\nmetrics: {out / 'metrics.jsonl'}")


@train_app.command("dpo")
def train_dpo_cmd(
    data: Annotated[Path, typer.Option(help="preferences.jsonl (soft labels in p_chosen)")],
    out: Annotated[Path, typer.Option(help="where the trained model goes")],
    model: ModelOpt = "default",
    beta: Annotated[float, typer.Option(help="DPO beta (strength of the KL anchor)")] = 0.1,
    min_margin: Annotated[float, typer.Option(help="leave out pairs with margin below this")] = 0.0,
    lr: LrOpt = 5e-7,
    epochs: EpochsOpt = 1.0,
    max_steps: StepsOpt = -1,
    batch_size: BatchOpt = 4,
    seed: SeedOpt = 0,
    lora: LoraOpt = False,
    resume: ResumeOpt = False,
    accelerate_config: AccelerateOpt = None,
) -> None:
    """DPO on AI preference labels; each pair shown as labelled with probability p_chosen."""
    from ..train.dpo import train_dpo

    if beta <= 0 or not 0 <= min_margin <= 1:
        raise InputError("--beta must be > 0 and --min-margin in [0, 1]")
    settings = _train_settings(model, out, lr, epochs, max_steps, batch_size, seed, lora, resume)
    relaunch_under_accelerate(accelerate_config)
    result = train_dpo(data, settings, beta, min_margin)
    typer.echo(json.dumps(result))
    typer.echo(f"model: {out}\nmetrics: {out / 'metrics.jsonl'}")


def _rl_command(algo: str):
    def command(
        prompts: PromptsOpt,
        reward: Annotated[str, typer.Option(help="rm:DIR (a reward model) or constitution:FILE")],
        out: Annotated[Path, typer.Option(help="where the trained policy goes")],
        model: ModelOpt = "default",
        judge: Annotated[str, typer.Option(help="feedback model for constitution:")] = "default",
        judge_backend: Annotated[
            str, typer.Option(help="the judge's engine: auto | hf | vllm | openai (--base-url)")
        ] = "hf",
        base_url: BaseUrlOpt = None,
        api_key_env: ApiKeyEnvOpt = None,
        concurrency: ConcurrencyOpt = 8,
        retry_for: RetryForOpt = 300.0,
        dtype: DtypeOpt = "auto",
        gpu_memory_utilization: GpuMemoryOpt = None,
        tensor_parallel_size: TensorParallelOpt = 1,
        max_model_len: MaxModelLenOpt = None,
        enforce_eager: EnforceEagerOpt = None,
        ensemble: Annotated[int, typer.Option(help="principles per comparison")] = 2,
        beta: Annotated[float, typer.Option(help="KL penalty to the reference model")] = 0.04,
        generations: Annotated[int, typer.Option(help="completions per prompt (group size)")] = 2,
        max_completion_length: Annotated[int, typer.Option(help="tokens per completion")] = 64,
        length_factor: Annotated[
            float, typer.Option(help="warn when mean length grows past this factor")
        ] = 2.0,
        kl_bound: Annotated[float, typer.Option(help="warn when KL passes this")] = 1.0,
        watch_refusals: Annotated[
            bool, typer.Option(help="log the share of refusals, as the judge reads them")
        ] = True,
        limit: Annotated[Optional[int], typer.Option(help="only the first N prompts")] = None,
        lr: LrOpt = 1e-6,
        epochs: EpochsOpt = 1.0,
        max_steps: StepsOpt = -1,
        batch_size: BatchOpt = 4,
        seed: SeedOpt = 0,
        lora: LoraOpt = False,
        resume: ResumeOpt = False,
        accelerate_config: AccelerateOpt = None,
    ) -> None:
        from ..backends import pick_backend
        from ..train.rl import train_rl

        chosen = pick_backend(judge_backend)
        judge_options = engine_options(
            chosen,
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
        if beta < 0 or generations < 2 or max_completion_length < 1 or ensemble < 1:
            raise InputError(
                "--beta must be >= 0, --generations >= 2, --max-completion-length "
                "and --ensemble >= 1"
            )
        settings = _train_settings(
            model, out, lr, epochs, max_steps, batch_size, seed, lora, resume
        )
        relaunch_under_accelerate(accelerate_config)
        result = train_rl(
            algo,
            prompts,
            reward,
            settings,
            beta=beta,
            generations=generations,
            max_completion_length=max_completion_length,
            judge=judge,
            judge_backend=chosen,
            judge_options=judge_options,
            ensemble=ensemble,
            limit=limit,
            length_factor=length_factor,
            kl_bound=kl_bound,
            watch_refusals=watch_refusals,
        )
        for w in result["warnings"]:
            _err(f"warning: {w}")
        typer.echo(json.dumps(result))
        typer.echo(f"policy: {out}\nmetrics: {out / 'metrics.jsonl'}")

    command.__doc__ = (
        f"{algo.upper()} with a KL penalty to the reference; reward from a "
        "reward model or the constitution judge."
    )
    return command


rloo_cmd = train_app.command("rloo")(_rl_command("rloo"))
grpo_cmd = train_app.command("grpo")(_rl_command("grpo"))
online_dpo_cmd = train_app.command("online-dpo")(_rl_command("online-dpo"))
