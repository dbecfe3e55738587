"""`cai generate preferences` on tiny models: labels, symmetry, counts, TRL, resume, bad pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_jsonl, write_prompts

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = ROOT / "constitutions" / "harmless.yaml"


def prefs(cli, model, out, *extra):
    return cli(
        "generate",
        "preferences",
        "--constitution",
        HARMLESS,
        "--policy",
        model,
        "--feedback",
        model,
        "--max-new-tokens",
        "6",
        "--backend",
        "hf",
        "--out",
        out,
        *extra,
    )


@pytest.fixture
def labelled(cli, tiny_model, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "run"
    code, stdout, err = prefs(
        cli, tiny_model, out, "--prompts", prompts, "--samples", "3", "--ensemble", "2"
    )
    assert code == 0, err
    return out, stdout


def test_counts_and_probabilities(labelled):
    out, stdout = labelled
    rows = read_jsonl(out / "preferences.jsonl")
    labels = read_jsonl(out / "labels.jsonl")
    assert len(rows) == 4 * 3  # C(3, 2) pairs per prompt
    assert len(labels) == 12 * 2 * 2  # E principles x both orders
    for j in labels:
        assert 0.0 <= j["p_a"] <= 1.0 and 0.0 <= j["p_first"] <= 1.0
        assert j["p_first"] == pytest.approx(j["p_a"] if j["order"] == "AB" else 1 - j["p_a"])
    for r in rows:
        assert 0.5 <= r["p_chosen"] <= 1.0 and r["margin"] == pytest.approx(2 * r["p_chosen"] - 1)
        assert len(r["principles"]) == 2
        assert r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant"
        mine = [j["p_first"] for j in labels if j["pair_id"] == r["id"]]
        p1 = sum(mine) / len(mine)
        assert r["p_chosen"] == pytest.approx(max(p1, 1 - p1))
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["labelled"] == 12 and 0 <= counts["position_consistency"] <= 1
    assert "longer answer chosen" in stdout


def test_swapped_pair_label_sums_to_one(cli, tiny_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    a, b = "Boil water, add the tea, wait three minutes.", "Tea is a drink."
    pairs.write_text(
        json.dumps({"id": "x", "prompt": "How do I make tea?", "response_a": a, "response_b": b})
        + "\n"
        + json.dumps({"id": "y", "prompt": "How do I make tea?", "response_a": b, "response_b": a})
        + "\n"
    )
    out = tmp_path / "run"
    code, _, err = prefs(cli, tiny_model, out, "--pairs", pairs, "--ensemble", "3")
    assert code == 0, err
    rows = {r["id"]: r for r in read_jsonl(out / "preferences.jsonl")}
    first_better = {
        k: r["p_chosen"]
        if r["chosen"][0]["content"] == (a if k == "x" else b)
        else 1 - r["p_chosen"]
        for k, r in rows.items()
    }
    assert first_better["x"] + first_better["y"] == pytest.approx(1.0, abs=1e-6)
    assert rows["x"]["principles"] == rows["y"]["principles"]


def test_trl_trainers_take_the_file_as_is(labelled, tiny_model, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    out, _ = labelled
    ds = load_dataset(
        "json",
        data_files=str(out / "preferences.jsonl"),
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    tok = AutoTokenizer.from_pretrained(tiny_model)
    common = dict(
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        learning_rate=1e-3,
    )
    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = [p.detach().clone() for p in policy.parameters()]
    DPOTrainer(
        model=policy,
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
        train_dataset=ds,
        processing_class=tok,
    ).train()
    assert any(not torch.equal(x, y) for x, y in zip(before, policy.parameters()))
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    before = [p.detach().clone() for p in rm.parameters()]
    RewardTrainer(
        model=rm,
        args=RewardConfig(output_dir=str(tmp_path / "rm"), **common),
        train_dataset=ds,
        processing_class=tok,
    ).train()
    assert any(not torch.equal(x, y) for x, y in zip(before, rm.parameters()))


def test_rerun_resumes_without_new_work(cli, tiny_model, labelled, tmp_path):
    out, _ = labelled
    before = {
        n: (out / n).read_bytes() for n in ("labels.jsonl", "samples.jsonl", "preferences.jsonl")
    }
    code, _, err = prefs(
        cli, tiny_model, out, "--prompts", tmp_path / "p.jsonl", "--samples", "3", "--ensemble", "2"
    )
    assert code == 0, err
    assert {n: (out / n).read_bytes() for n in before} == before


def test_pairs_from_a_critique_log_and_bad_pairs(cli, tiny_model, tmp_path):
    pairs = tmp_path / "critiques.jsonl"
    chat = [{"role": "user", "content": "Help me?"}]
    pairs.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {
                    "id": "c1",
                    "prompt": chat,
                    "initial_response": "No.",
                    "final_response": "Sure, with what?",
                },
                {
                    "id": "c2",
                    "prompt": chat,
                    "initial_response": "Same.",
                    "final_response": "Same.",
                },
                {"id": "c3", "prompt": chat, "initial_response": "", "final_response": "Hello."},
            ]
        )
    )
    out = tmp_path / "run"
    code, stdout, err = prefs(cli, tiny_model, out, "--pairs", pairs, "--ensemble", "1")
    assert code == 0, err
    assert [r["id"] for r in read_jsonl(out / "preferences.jsonl")] == ["c1"]
    skipped = {
        r["pair_id"]: r["skipped"] for r in read_jsonl(out / "labels.jsonl") if "skipped" in r
    }
    assert skipped == {"c2": "identical answers", "c3": "empty answer"}
    assert "1 identical answers, 1 empty answer" in stdout


def test_cot_is_clamped(cli, tiny_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) + "\n"
    )
    out = tmp_path / "run"
    code, _, err = prefs(cli, tiny_model, out, "--pairs", pairs, "--ensemble", "2", "--cot")
    assert code == 0, err
    labels = read_jsonl(out / "labels.jsonl")
    assert len(labels) == 4
    for j in labels:
        assert 0.4 <= j["p_a"] <= 0.6 and isinstance(j["cot"], str)


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--samples", "1"], "--samples must be at least 2"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--clamp", "0.7,0.2"], "--clamp needs 0 <= LO < HI <= 1"),
        (["--pairs", "NOPAIRS"], "no answer columns"),
    ],
)
def test_bad_preference_input(cli, tiny_model, tmp_path, extra, fragment):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "answer": "y"}) + "\n")
    extra = [str(bad) if x == "NOPAIRS" else x for x in extra]
    out = tmp_path / "out"
    code, _, err = prefs(cli, tiny_model, out, "--prompts", "helpful", "--limit", "1", *extra)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_splits_cleanly_detects_merged_option_tokens(tiny_model):
    """An option that would merge with the text before it is detected (and flagged in labels)."""
    from cai.backends import make_backend

    backend = make_backend("hf", tiny_model)
    assert backend.splits_cleanly("The answer is: (", ["A", "B"])
    assert not backend.splits_cleanly("The answer is: (xy", ["z"])  # "xyz" is one token
