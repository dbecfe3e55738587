"""Prompt files: every supported format, the shipped sets, and each kind of bad file."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai.errors import CaiError, InputError
from cai.inputs import load_prompts, shipped_promptsets


def test_shipped_sets_are_large_and_distinct():
    assert {"red-team", "helpful"} <= set(shipped_promptsets())
    red, helpful = load_prompts("red-team"), load_prompts("helpful")
    assert len(red) >= 150 and len(helpful) >= 150
    assert len({i.messages for i in red}) == len(red)
    assert len({i.meta["category"] for i in red}) >= 10
    assert len({i.meta["category"] for i in helpful}) >= 10
    assert not {i.messages for i in red} & {i.messages for i in helpful}


def test_jsonl_prompt_and_messages(tmp_path):
    p = tmp_path / "p.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    p.write_text(
        json.dumps({"prompt": "One?"}) + "\n\n" + json.dumps({"id": 7, "messages": chat}) + "\n"
    )
    items = load_prompts(str(p))
    assert [i.id for i in items] == ["p-00001", "7"]
    assert items[1].chat == chat


def test_csv_txt_parquet(tmp_path):
    (tmp_path / "a.csv").write_text('id,prompt,topic\nx1,"Hello, there?",greet\nx2,Bye,leave\n')
    assert [i.chat[0]["content"] for i in load_prompts(str(tmp_path / "a.csv"))] == [
        "Hello, there?",
        "Bye",
    ]
    (tmp_path / "b.txt").write_text("first\n\n  second  \n")
    assert [i.chat[0]["content"] for i in load_prompts(str(tmp_path / "b.txt"))] == [
        "first",
        "second",
    ]
    table = pa.table({"messages": [[{"role": "user", "content": "From parquet"}]]})
    pq.write_table(table, tmp_path / "c.parquet")
    assert load_prompts(str(tmp_path / "c.parquet"))[0].chat[0]["content"] == "From parquet"


def test_limit(tmp_path):
    assert len(load_prompts("helpful", limit=5)) == 5


@pytest.mark.parametrize(
    "name,content,fragment",
    [
        ("empty.jsonl", "", "no prompts (the file is empty)"),
        ("blank.txt", "\n\n", "no prompts"),
        ("cols.jsonl", '{"text": "hi"}\n', ":1: no usable column"),
        ("cols.csv", "text,other\nhi,there\n", ":1: no usable column"),
        ("badjson.jsonl", '{"prompt": "a"}\n{"prompt": \n', ":2: not valid JSON"),
        (
            "dup.jsonl",
            '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n',
            ":2: id: duplicate id",
        ),
        ("emptyprompt.jsonl", '{"prompt": "   "}\n', ":1: prompt: is empty"),
        ("lastturn.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', "last turn"),
        ("kind.xlsx", "x", "unsupported prompts file type"),
    ],
)
def test_bad_prompt_files(tmp_path, name, content, fragment):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(InputError) as exc:
        load_prompts(str(p))
    assert str(exc.value).startswith(str(p)) and fragment in str(exc.value)


def test_non_utf8_and_missing(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CaiError, match="not UTF-8"):
        load_prompts(str(p))
    with pytest.raises(InputError, match="file not found"):
        load_prompts(str(tmp_path / "nope.jsonl"))
