"""`cai.hh`: Human:/Assistant: preference transcripts into cai's preference format.

Every transcript here was written for these tests.
"""

from __future__ import annotations

import json

import pytest

from cai.errors import InputError
from cai.hh import import_hh, write_preferences

ONE_Q = "\n\nHuman: How long should I steep green tea?"
ONE_GOOD = ONE_Q + "\n\nAssistant: About two to three minutes, in water just below boiling."
ONE_BAD = ONE_Q + "\n\nAssistant: Tea is a drink."

MULTI_Q = (
    "\n\nHuman: I want to start running. Any tips?"
    "\n\nAssistant: Start slowly, with short runs a few times a week."
    "\n\nHuman: What about shoes?"
)
MULTI_GOOD = MULTI_Q + "\n\nAssistant: Get fitted at a running shop; comfort matters most."
MULTI_BAD = MULTI_Q + "\n\nAssistant: Shoes are optional."


def _line(chosen, rejected) -> str:
    return json.dumps({"chosen": chosen, "rejected": rejected})


def _write(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_single_turn(tmp_path):
    path = _write(tmp_path, [_line(ONE_GOOD, ONE_BAD)])
    records, problems = import_hh(path)
    assert problems == []
    assert records == [
        {
            "id": "pairs-1",
            "prompt": [{"role": "user", "content": "How long should I steep green tea?"}],
            "chosen": [
                {
                    "role": "assistant",
                    "content": "About two to three minutes, in water just below boiling.",
                }
            ],
            "rejected": [{"role": "assistant", "content": "Tea is a drink."}],
            "p_chosen": 1.0,
            "margin": 1.0,
            "source": "human",
            "principles": [],
            "position_consistent": True,
        }
    ]


def test_multi_turn(tmp_path):
    path = _write(tmp_path, [_line(MULTI_GOOD, MULTI_BAD)], name="runs.jsonl")
    (record,), problems = import_hh(path)
    assert problems == []
    assert record["id"] == "runs-1"
    assert record["prompt"] == [
        {"role": "user", "content": "I want to start running. Any tips?"},
        {"role": "assistant", "content": "Start slowly, with short runs a few times a week."},
        {"role": "user", "content": "What about shoes?"},
    ]
    assert record["chosen"] == [
        {"role": "assistant", "content": "Get fitted at a running shop; comfort matters most."}
    ]
    assert record["rejected"] == [{"role": "assistant", "content": "Shoes are optional."}]


def test_tolerant_of_missing_leading_blank_line_and_crlf(tmp_path):
    chosen = "Human:  Is it raining?  \r\n\r\nAssistant: I can't see outside, sorry. "
    rejected = "Human: Is it raining?\n\nAssistant: Yes."
    (record,), problems = import_hh(_write(tmp_path, [_line(chosen, rejected)]))
    assert problems == []
    assert record["prompt"] == [{"role": "user", "content": "Is it raining?"}]
    assert record["chosen"][0]["content"] == "I can't see outside, sorry."
    assert record["rejected"][0]["content"] == "Yes."


def test_mixed_good_and_bad_lines(tmp_path):
    other_q = "\n\nHuman: What is a good name for a cat?\n\nAssistant: Pixel."
    lines = [
        _line(ONE_GOOD, ONE_BAD),  # 1 ok
        "{not json",  # 2
        json.dumps({"chosen": ONE_GOOD}),  # 3 no rejected
        json.dumps({"chosen": ONE_GOOD, "rejected": 7}),  # 4 rejected not a string
        "",  # 5 blank: skipped silently
        _line(ONE_GOOD, other_q),  # 6 different conversations
        _line(ONE_GOOD, ONE_GOOD),  # 7 identical answers
        _line(ONE_Q, ONE_Q),  # 8 no final Assistant turn
        _line("\n\nAssistant: Hello.", "\n\nAssistant: Hi."),  # 9 no Human turn
        _line(MULTI_GOOD, MULTI_BAD),  # 10 ok
        _line(ONE_Q + "\n\nAssistant:", ONE_BAD),  # 11 empty final answer
        json.dumps([ONE_GOOD, ONE_BAD]),  # 12 not an object
    ]
    path = _write(tmp_path, lines)
    records, problems = import_hh(path)
    assert [r["id"] for r in records] == ["pairs-1", "pairs-10"]
    prefix = f"{path}:"
    assert all(p.startswith(prefix) for p in problems)
    reasons = {int(n): why for n, why in (p[len(prefix) :].split(": ", 1) for p in problems)}
    assert list(reasons) == [2, 3, 4, 6, 7, 8, 9, 11, 12]
    assert "not valid JSON" in reasons[2]
    assert "rejected" in reasons[3]
    assert "rejected" in reasons[4]
    assert "differ before their final Assistant turn" in reasons[6]
    assert "identical" in reasons[7]
    assert "does not end with an Assistant turn" in reasons[8]
    assert "no Human turn" in reasons[9]
    assert "empty" in reasons[11]
    assert "not a JSON object" in reasons[12]


def test_all_bad_raises(tmp_path):
    path = _write(tmp_path, ["{not json", _line(ONE_GOOD, ONE_GOOD)])
    with pytest.raises(InputError) as err:
        import_hh(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: no usable pairs (2 problems; first: {path}:1: not valid JSON")


def test_empty_file_raises(tmp_path):
    path = _write(tmp_path, ["", "  "])
    with pytest.raises(InputError, match="no usable pairs"):
        import_hh(path)


def test_unreadable_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        import_hh(tmp_path / "missing.jsonl")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"chosen": "caf\xe9"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        import_hh(latin)


def test_written_file_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = _write(tmp_path, [_line(ONE_GOOD, ONE_BAD), _line(MULTI_GOOD, MULTI_BAD)])
    records, _ = import_hh(path)
    out = tmp_path / "out" / "preferences.jsonl"
    write_preferences(records, out)
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == records
    ds = datasets.load_dataset(
        "json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert len(ds) == 2
    assert {"prompt", "chosen", "rejected", "p_chosen"} <= set(ds.column_names)
    assert ds[1]["prompt"] == records[1]["prompt"]
    assert ds[1]["chosen"] == records[1]["chosen"]
    assert ds[0]["rejected"] == records[0]["rejected"]
    assert ds["p_chosen"] == [1.0, 1.0]
