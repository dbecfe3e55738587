"""Training files read and checked in plain Python, before TRL, torch or a model loads.

Every row of ``sft.jsonl`` or ``preferences.jsonl`` is checked field by field; the first problem
stops the run with the file, line and field. A file that passes becomes the trainer's rows
unchanged (``datasets.Dataset.from_list``), so what was checked is what trains. Not handled here:
what the rows mean (a trainer's own filters, such as DPO's ``--min-margin``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..inputs import input_error, jsonl_rows

ROLES = ("system", "user", "assistant")


def chat(path: Path, line: int, value: Any, field: str) -> list[dict[str, str]]:
    """A non-empty list of ``{role, content}`` turns, or an error naming the field."""
    if not isinstance(value, list) or not value:
        raise input_error(path, line, f"{field}: must be a non-empty list of {{role, content}}")
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise input_error(path, line, f"{field}[{i}]: must have exactly `role` and `content`")
        if turn["role"] not in ROLES:
            raise input_error(path, line, f"{field}[{i}].role: must be one of {', '.join(ROLES)}")
        if not isinstance(turn["content"], str):
            raise input_error(path, line, f"{field}[{i}].content: must be text")
    return value


def probability(path: Path, line: int, value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise input_error(path, line, f"{field}: must be a number from 0 to 1 (got {value!r:.40})")
    return float(value)


def rows_of(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a JSONL training file; an error when it has none."""
    rows = list(jsonl_rows(Path(path)))
    if not rows:
        raise InputError(f"{path}: no rows (the file is empty)")
    return rows


def sft_rows(path: Path) -> list[dict[str, Any]]:
    """``messages`` chats that end with the assistant's turn (cai's ``sft.jsonl``)."""
    out = []
    for line, row in rows_of(path):
        if "messages" not in row:
            raise input_error(path, line, "messages: missing (expected cai's sft.jsonl rows)")
        messages = chat(path, line, row["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise input_error(path, line, "messages: must end with the assistant's turn")
        out.append({"messages": messages})
    return out


def preference_rows(path: Path, *, soft: bool) -> list[dict[str, Any]]:
    """Pairs of ``preferences.jsonl``: ``prompt`` (a chat, or text), ``chosen`` and ``rejected``
    (assistant turns, or text, in the prompt's form), ``p_chosen`` (required when ``soft``),
    optional ``margin`` and ``id``. Every row takes the form of the first (TRL reads a column
    as one type)."""
    out: list[dict[str, Any]] = []
    form: tuple[int, bool] | None = None  # (line, conversational) of the first row
    for line, row in rows_of(path):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if soft and "p_chosen" not in row:
            missing.append("p_chosen")
        if missing:
            raise input_error(
                path, line, f"{missing[0]}: missing (expected cai's preferences.jsonl rows)"
            )
        conversational = isinstance(row["prompt"], list)
        if form is None:
            form = (line, conversational)
        elif form[1] != conversational:
            raise input_error(
                path,
                line,
                f"prompt: a {'chat' if conversational else 'text'} here but a "
                f"{'chat' if form[1] else 'text'} on line {form[0]}; use one form per file",
            )
        record: dict[str, Any] = {}
        for name in ("prompt", "chosen", "rejected"):
            value = row[name]
            if conversational:
                record[name] = chat(path, line, value, name)
                if name != "prompt" and value[-1]["role"] != "assistant":
                    raise input_error(path, line, f"{name}: must end with the assistant's turn")
            elif not isinstance(value, str):
                raise input_error(path, line, f"{name}: must be text, as the prompt is")
            else:
                record[name] = value
        for name in ("p_chosen", "margin"):
            if row.get(name) is not None or (name == "p_chosen" and soft):
                record[name] = probability(path, line, row.get(name), name)
        if "id" in row:
            record["id"] = str(row["id"])
        out.append(record)
    if soft and len(out) < 2:
        raise InputError(f"{path}: a reward model needs at least 2 pairs (got {len(out)})")
    return out


def reward_rows(path: Path) -> list[dict[str, Any]]:
    """Pairs for a reward model: soft labels, and chats (it scores prompt + answer as one)."""
    rows = preference_rows(path, soft=True)
    if not isinstance(rows[0]["prompt"], list):
        raise InputError(f"{path}: prompt: a reward model needs chats, not text")
    return rows


def dataset(rows: list[dict[str, Any]]):
    """The checked rows as a ``datasets.Dataset``."""
    from datasets import Dataset

    return Dataset.from_list(rows)
