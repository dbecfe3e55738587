"""`cai generate critiques | preferences` and `cai show-prompt`: parse, run the stage, print."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import CONSTITUTION_HELP, CritiqueConfig, PreferenceConfig
from ..errors import InputError
from . import DRY_RUN, Bar, app, generate_app, show_plan, stage_command


@stage_command(generate_app, "critiques", CritiqueConfig, DRY_RUN)
def generate_critiques(cfg: CritiqueConfig, dry_run: bool = False) -> None:
    """SL-CAI: answer each prompt, then critique and revise it for N rounds."""
    from ..stages.critique import plan_critiques, run_critiques

    if dry_run:
        show_plan(plan_critiques(cfg))
        return
    show_critiques(cfg, run_critiques(cfg, Bar))


def show_critiques(cfg: CritiqueConfig, summary: dict) -> None:
    out = cfg.out
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


@stage_command(generate_app, "preferences", PreferenceConfig, DRY_RUN)
def generate_preferences(cfg: PreferenceConfig, dry_run: bool = False) -> None:
    """RL-CAI: soft preference labels from option log-probs, both orders, over E principles."""
    from ..stages.preferences import plan_preferences, run_preferences

    if dry_run:
        show_plan(plan_preferences(cfg))
        return
    show_preferences(cfg, run_preferences(cfg, Bar))


def show_preferences(cfg: PreferenceConfig, summary: dict) -> None:
    typer.echo(
        f"done: {summary['labelled']} of {summary['pairs']} pairs labelled, "
        f"{summary['kept']} kept (min margin {cfg.min_margin})"
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
    typer.echo(f"labels:      {cfg.out / 'labels.jsonl'}")
    typer.echo(f"preferences: {cfg.out / 'preferences.jsonl'}")


@app.command("show-prompt")
def show_prompt(
    constitution: Annotated[str, typer.Option(help=CONSTITUTION_HELP)] = "harmless",
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
