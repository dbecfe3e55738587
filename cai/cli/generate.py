"""`cai generate critiques` and `cai generate preferences`: parse, call the stage, print."""

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
    ModelOpt,
    PromptsOpt,
    RetryForOpt,
    TensorParallelOpt,
    _err,
    _Progress,
    _versions,
    engine_options,
    engine_record,
    generate_app,
    resolve_for,
)
from ..errors import BackendUnavailable, InputError


@generate_app.command("critiques")
def generate_critiques(
    constitution: ConstitutionOpt = "harmless",
    prompts: PromptsOpt = "red-team",
    model: ModelOpt = "default",
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
    from ..backends import Sampling, make_backend, pick_backend
    from ..constitution import load_constitution
    from ..inputs import load_prompts
    from ..stages.critique import CritiqueSettings, critique_revise, plan
    from ..store import RunDir

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
    options = engine_options(
        chosen_backend,
        batch_size=batch_size,
        chunk_size=chunk_size,
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
    resolved = resolve_for(chosen_backend, model)
    settings = CritiqueSettings(model=resolved.label, rounds=rounds, sampling=sampling, seed=seed)
    manifest_settings = {"stage": "critiques", **settings.as_dict(), "constitution_hash": cons.hash}
    with RunDir(out) as run:
        run.check_settings(manifest_settings)
        t0 = time.perf_counter()
        engine = make_backend(chosen_backend, model, **options)
        load_s = time.perf_counter() - t0
        manifest = {
            "settings": manifest_settings,
            "status": "running",
            "constitution": cons.info(),
            "prompts": prompts,
            "model_path": resolved.path,
            **engine_record(engine),
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
        except BackendUnavailable as err:
            progress.stop()
            done = sum(1 for _ in run.log("steps.jsonl").read())
            raise BackendUnavailable(
                f"{err}; {done} finished model call(s) are kept in {out}; "
                "run the same command again when a server is back"
            ) from None
        progress.stop()
        summary["model_load_seconds"] = round(load_s, 3)
        manifest.update(
            {
                "status": "complete",
                "counts": summary,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        if hasattr(engine, "stats"):
            manifest["servers"] = engine.stats()
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
    prompts: PromptsOpt = "red-team",
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
) -> None:
    """RL-CAI: soft preference labels from option log-probs, both orders, over E principles."""
    from ..backends import Sampling, make_backend, pick_backend
    from ..constitution import load_constitution
    from ..inputs import load_pairs, load_prompts
    from ..stages.preferences import LabelSettings, Pair, judge_pairs, policy_samples, sample_pairs
    from ..store import RunDir, key

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
    options = engine_options(
        chosen_backend,
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
    cons = load_constitution(constitution)
    if pairs is not None:
        rows = load_pairs(pairs)[:limit]
        pair_list = [Pair(i, key("pair", m, a, b), m, a, b) for i, m, a, b in rows]
        items = []
    else:
        items = load_prompts(prompts, limit)
    judge = resolve_for(chosen_backend, feedback)
    policy_model = None if pairs else resolve_for(chosen_backend, policy)
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
        "policy": None if pairs else policy_model.label,
        "samples": None if pairs else samples,
        "sampling": None if pairs else sampling.as_dict(),
    }
    with RunDir(out) as run:
        run.check_settings(run_settings)
        judge_engine = make_backend(chosen_backend, feedback, **options)
        manifest = {
            "settings": run_settings,
            "status": "running",
            "constitution": cons.info(),
            "prompts": pairs or prompts,
            **engine_record(judge_engine),
            "versions": _versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        run.write_manifest(manifest)
        try:
            if pairs is None:
                same = policy_model.path == judge.path
                policy_engine = (
                    judge_engine if same else make_backend(chosen_backend, policy, **options)
                )
                progress = _Progress("policy samples")
                progress.start(len(items))
                answers, keys = policy_samples(
                    items, policy_engine, run, samples, sampling, progress
                )
                progress.stop()
                if policy_engine is not judge_engine and hasattr(policy_engine, "close"):
                    policy_engine.close()  # its memory goes back before the judging
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
        except BackendUnavailable as err:
            raise BackendUnavailable(
                f"{err}; finished samples and labels are kept in {out}; "
                "run the same command again when a server is back"
            ) from None
        manifest.update(
            {
                "status": "complete",
                "counts": summary,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        if hasattr(judge_engine, "stats"):
            manifest["servers"] = judge_engine.stats()
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
