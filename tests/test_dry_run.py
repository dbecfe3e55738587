"""`--dry-run` tells the truth: its prompt tokens are within 10% of what the real run records it
sent, work already in --out is left out, no weights load, and nothing is written.

The tiny model never writes its end-of-turn token, so every answer runs to --max-new-tokens and
the plan's ceiling is what the run sends (up to how the answers' text tokenizes again).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import build_tiny_model, cai_subprocess, critique_args, read_jsonl, write_prompts

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = ROOT / "constitutions" / "harmless.yaml"
WITHIN = 0.10  # the plan's prompt tokens against the run's, relative


def plan_of(stdout: str) -> dict:
    return json.loads(stdout[: stdout.index("\n}\n") + 2])["plan"]


def files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` and its bytes (nothing when it does not exist)."""
    if not out.exists():
        return {}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def counts(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["counts"]


def near(planned: int, sent: int) -> bool:
    return sent > 0 and abs(planned - sent) <= WITHIN * sent


def dry(cli, args: list, out: Path) -> dict:
    """The plan, checking that the dry run wrote nothing under ``out``."""
    before = files(out)
    code, stdout, err = cli(*args, "--dry-run")
    assert code == 0, err
    assert files(out) == before
    return plan_of(stdout)


def test_critiques_plan_is_what_the_run_sends_and_leaves_out_what_is_done(
    cli, tiny_model, tmp_path
):
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    out = tmp_path / "run"
    args = critique_args(tiny_model, prompts, out, 6)  # 2 rounds
    plan = dry(cli, args, out)
    assert not out.exists()
    assert plan["model_calls"] == {"response": 3, "critique": 6, "revision": 6}
    assert plan["max_new_tokens_total"] == 15 * 6
    assert all(h.startswith("tokenizer") for h in plan["prompt_tokens_counted_with"].values())
    code, _, err = cli(*args)
    assert code == 0, err
    real = counts(out)
    assert real["model_calls_now"] == plan["calls"] == 15
    assert real["generated_tokens_now"] == plan["max_new_tokens_total"]
    steps = read_jsonl(out / "steps.jsonl")
    assert sum(s["prompt_tokens"] for s in steps) == real["prompt_tokens_now"]
    assert near(plan["prompt_tokens"], real["prompt_tokens_now"]), (plan, real)
    for step, planned in plan["prompt_tokens_by_step"].items():
        assert near(planned, sum(s["prompt_tokens"] for s in steps if s["step"] == step))

    # finished: nothing left to do, and the plan says what is done
    again = dry(cli, args, out)
    assert again["calls"] == again["prompt_tokens"] == again["max_new_tokens_total"] == 0
    assert again["calls_done"] == {"response": 3, "critique": 6, "revision": 6}
    assert again["prompts_done"] == 3

    # as a kill after the first round's critiques leaves it (a last line cut short included):
    # the plan is what is left, read without repairing the log
    kept = "".join(f"{json.dumps(s)}\n" for s in steps[:6])
    (out / "steps.jsonl").write_text(kept + '{"key": "cut sh')
    (out / "critiques.jsonl").unlink()
    (out / "sft.jsonl").unlink()
    left = dry(cli, args, out)
    assert left["model_calls"] == {"response": 0, "critique": 3, "revision": 6}
    assert left["calls_done"] == {"response": 3, "critique": 3, "revision": 0}
    code, _, err = cli(*args)
    assert code == 0, err
    resumed = counts(out)
    assert resumed["model_calls_now"] == left["calls"] == 9
    assert near(left["prompt_tokens"], resumed["prompt_tokens_now"]), (left, resumed)


def prefs_args(model, prompts, out) -> list:
    return [
        "generate",
        "preferences",
        "--constitution",
        HARMLESS,
        "--prompts",
        prompts,
        "--policy",
        model,
        "--feedback",
        model,
        "--samples",
        "2",
        "--ensemble",
        "2",
        "--max-new-tokens",
        "6",
        "--backend",
        "hf",
        "--out",
        out,
    ]


def test_preferences_plan_is_what_the_run_sends(cli, tiny_model, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    out = tmp_path / "run"
    args = prefs_args(tiny_model, prompts, out)
    plan = dry(cli, args, out)
    assert not out.exists()
    assert plan["pairs"] == 3
    assert plan["model_calls"] == {"samples": 3, "judgements": 3 * 2 * 2}  # pairs x E x orders
    assert plan["max_new_tokens_total"] == 3 * 2 * 6
    code, _, err = cli(*args)
    assert code == 0, err
    real = counts(out)
    assert (real["samples_now"], real["judgements_now"]) == (3, 12)
    labels = [r for r in read_jsonl(out / "labels.jsonl") if "skipped" not in r]
    assert sum(r["prompt_tokens"] for r in labels) == real["judge_prompt_tokens_now"]
    samples = read_jsonl(out / "samples.jsonl")
    assert sum(r["prompt_tokens"] for r in samples) == real["sample_prompt_tokens_now"]
    assert near(plan["prompt_tokens"], real["prompt_tokens_now"]), (plan, real)
    assert plan["prompt_tokens_by_step"]["samples"] == real["sample_prompt_tokens_now"]

    again = dry(cli, args, out)
    assert again["calls"] == again["prompt_tokens"] == 0
    assert again["calls_done"] == {"samples": 3, "judgements": 12}


def test_compare_plan_is_what_the_run_sends(cli, tiny_model, tmp_path):
    other = str(build_tiny_model(tmp_path / "tiny-b", seed=1))
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    out = tmp_path / "run"
    args = ["eval", "compare", "--model", f"A={tiny_model}", "--baseline", f"B={other}"]
    args += ["--judge", tiny_model, "--prompts", prompts, "--constitution", HARMLESS]
    args += ["--ensemble", "2", "--max-new-tokens", "6", "--resamples", "50"]
    args += ["--backend", "hf", "--out", out]
    plan = dry(cli, args, out)
    assert not out.exists()
    assert plan["model_calls"] == {
        "answers of B": 3,
        "answers of A": 3,
        "judgements": 3 * 2 * 2,
        "refusal checks": 2 * 3,
    }
    assert plan["max_new_tokens_total"] == 2 * 3 * 6
    code, _, err = cli(*args)
    assert code == 0, err
    real = counts(out)
    assert (real["new_answers"], real["new_judgements"], real["new_refusal_checks"]) == (6, 12, 6)
    logs = ("answers.jsonl", "labels.jsonl", "refusals.jsonl")
    recorded = sum(r.get("prompt_tokens") or 0 for f in logs for r in read_jsonl(out / f))
    assert recorded == real["prompt_tokens_now"]
    assert near(plan["prompt_tokens"], real["prompt_tokens_now"]), (plan, real)

    again = dry(cli, args, out)
    assert again["calls"] == again["prompt_tokens"] == 0
    assert sum(again["calls_done"].values()) == 6 + 12 + 6


def test_pipeline_dry_run_plans_every_generating_stage_and_loads_no_weights(tiny_model, tmp_path):
    """In a process of its own, which reports every module it imports: no engine and no model
    code (weights load through transformers' modeling modules), nothing under the pipeline's out;
    each generating stage that runs prints its planner's figures, or why it has none."""
    from cai.cli.pipeline import plan_line
    from cai.pipeline import load_pipeline
    from cai.stages.compare import plan_compare
    from cai.stages.critique import plan_critiques
    from cai.stages.preferences import plan_preferences

    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    other = str(build_tiny_model(tmp_path / "tiny-b", seed=1))
    out = tmp_path / "run"
    pipe = tmp_path / "five.yaml"
    pipe.write_text(
        f"name: five\nout: {out}\n"
        f"defaults: {{backend: hf, constitution: {HARMLESS}, max_new_tokens: 6, "
        f"prompts: {prompts}}}\n"
        "stages:\n"
        f"  - {{stage: critiques, model: {tiny_model}}}\n"
        "  - {stage: sft, data: '{critiques}/sft.jsonl', max_steps: 1}\n"
        f"  - {{stage: preferences, policy: '{{sft}}', feedback: {tiny_model}}}\n"
        f"  - {{name: labels, stage: preferences, policy: {tiny_model}, feedback: {tiny_model}, "
        "ensemble: 2}\n"
        f"  - {{stage: compare, model: [{tiny_model}], baseline: {other}, judge: {tiny_model}, "
        "ensemble: 2}\n"
    )
    proc = cai_subprocess("run", pipe, "--dry-run", env={"PYTHONPROFILEIMPORTTIME": "1"})
    stdout, imports = proc.communicate(timeout=600)
    assert proc.returncode == 0, imports[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in imports.splitlines() if "|" in line}
    assert "cai.stages.plan" in loaded  # the report is there to read
    assert not loaded & {"cai.backends.hf.engine", "cai.backends.vllm", "vllm"}
    assert not [m for m in loaded if m.startswith("transformers.models.llama.modeling")]
    assert not out.exists()

    stages = {st.name: st.cfg for st in load_pipeline(pipe).stages}
    assert stdout.splitlines() == [
        "critiques: run (not run yet)",
        "  plan: " + plan_line(plan_critiques(stages["critiques"])["plan"]),
        "sft: run (critiques runs before it)",
        "preferences: run (sft runs before it)",
        "  plan: reads the output of sft, which does not exist yet",
        "labels: run (not run yet)",
        "  plan: " + plan_line(plan_preferences(stages["labels"])["plan"]),
        "compare: run (not run yet)",
        "  plan: " + plan_line(plan_compare(stages["compare"])["plan"]),
    ]
    assert stdout.count("generated tokens at most (0 calls done)") == 3
    assert "15 model calls" in stdout and "24 model calls" in stdout
