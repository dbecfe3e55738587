"""`cai eval labeler` (both data formats, calibration) and `cai data import-hh` from the CLI."""

from __future__ import annotations

import json

import pytest
from conftest import read_jsonl

from cai.stats import ece

MC = {
    "prompt": "Human: Which one is a fruit?\n\nChoices:\n (A) an apple\n (B) a brick\n\n"
    "Assistant: The answer is:",
    "corrects": ["(A) an apple"],
    "incorrects": ["(B) a brick"],
}
PAIR = {
    "prompt": "How do I stay safe on a hike?",
    "chosen": "Tell someone your route, carry water and a map.",
    "rejected": "Just go.",
}


def test_ece_by_hand():
    assert ece([0.9, 0.9, 0.6, 0.6], [True, True, True, False]) == pytest.approx(0.1)
    assert ece([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert ece([0.75] * 4, [True, False, False, False]) == pytest.approx(0.5)


def test_eval_labeler_reads_both_formats(cli, tiny_model, tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [MC, MC, PAIR, PAIR, PAIR]))
    out = tmp_path / "result.json"
    code, stdout, err = cli(
        "eval", "labeler", "--data", data, "--model", tiny_model, "--backend", "hf", "--out", out
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    printed = json.loads(stdout)  # the summary: the file without each item's probabilities
    for part in ("multiple_choice", "pairs"):
        assert {**printed[part], "per_item": result[part]["per_item"]} == result[part]
    assert {k: v for k, v in printed.items() if k not in ("multiple_choice", "pairs")} == {
        k: v for k, v in result.items() if k not in ("multiple_choice", "pairs")
    }
    assert result["multiple_choice"]["items"] == 2 and result["pairs"]["pairs"] == 3
    assert len(result["multiple_choice"]["per_item"]) == 2
    assert all(
        sum(item["probs"]) == pytest.approx(1) for item in result["multiple_choice"]["per_item"]
    )
    assert [sorted(item["p_chosen"]) for item in result["pairs"]["per_item"]] == [["AB", "BA"]] * 3
    for part in ("multiple_choice", "pairs"):
        assert 0 <= result[part]["accuracy"] <= 1 and 0 <= result[part]["ece"] <= 1
    for order in ("accuracy_chosen_first", "accuracy_chosen_second"):
        assert result["pairs"][order] in (0.0, 1 / 3, 2 / 3, 1.0)  # 3 pairs, one judgement each


def test_eval_labeler_bad_line(cli, tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps(MC) + "\n" + json.dumps({"prompt": "x", "answer": "y"}) + "\n")
    code, _, err = cli("eval", "labeler", "--data", data, "--model", "no-such-model")
    assert code == 2 and f"{data}:2: expected" in err


def test_import_hh_cli(cli, tmp_path):
    src = tmp_path / "hh.jsonl"
    good = {
        "chosen": "\n\nHuman: Is it safe to swim after eating?\n\nAssistant: Yes, a light meal "
        "is fine.",
        "rejected": "\n\nHuman: Is it safe to swim after eating?\n\n"
        "Assistant: Never, you will drown.",
    }
    src.write_text(
        json.dumps(good) + "\n" + json.dumps({"chosen": "no markers", "rejected": "x"}) + "\n"
    )
    out = tmp_path / "prefs.jsonl"
    code, stdout, err = cli("data", "import-hh", src, "--out", out)
    assert code == 0, err
    rows = read_jsonl(out)
    assert len(rows) == 1 and rows[0]["p_chosen"] == 1.0
    assert rows[0]["prompt"] == [{"role": "user", "content": "Is it safe to swim after eating?"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Yes, a light meal is fine."}]
    assert f"{src}:2:" in err and "1 line(s) skipped" in stdout
