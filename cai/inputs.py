"""Prompt files in: ``.jsonl``, ``.csv``, ``.parquet`` (a ``prompt`` or ``messages`` column) or
``.txt`` (one prompt per line), or the short name of a shipped set (``red-team``, ``helpful``).

Each prompt becomes a :class:`PromptItem` with a stable id (the file's ``id`` column, else
``<file stem>-<row>``) and a chat (``messages``), whose last turn is the user's. Every problem
names the file and, where there is one, the line; an empty file is an error.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .yamlfile import read_text

PROMPTSETS_DIR = Path(__file__).resolve().parent / "promptsets"
SUFFIXES = (".jsonl", ".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class PromptItem:
    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, hashable
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def chat(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


def shipped_promptsets() -> list[str]:
    return sorted(p.stem for p in PROMPTSETS_DIR.glob("*.jsonl"))


def resolve_prompts_path(spec: str) -> Path:
    path = Path(spec)
    if not path.exists() and spec in shipped_promptsets():
        return PROMPTSETS_DIR / f"{spec}.jsonl"
    return path


def input_error(path: Path, line: int | None, msg: str) -> InputError:
    """An InputError naming the file and, when given, the line.

    >>> str(input_error(Path("p.jsonl"), 3, "id: missing"))
    'p.jsonl:3: id: missing'
    """
    return InputError(f"{path}:{line}: {msg}" if line else f"{path}: {msg}")


def _messages(path: Path, line: int, value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise input_error(path, line, "messages: not a JSON list of {role, content}") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise input_error(path, line, "messages: must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or set(m) - {"role", "content"}
            or not {"role", "content"} <= set(m)
        ):
            raise input_error(path, line, f"messages[{i}]: must have exactly `role` and `content`")
        if m["role"] not in ("system", "user", "assistant") or not isinstance(m["content"], str):
            raise input_error(
                path, line, f"messages[{i}]: role must be system/user/assistant, content text"
            )
        out.append((m["role"], m["content"]))
    if out[-1][0] != "user":
        raise input_error(path, line, "messages: the last turn must be the user's")
    return tuple(out)


def prompt_item(path: Path, line: int, row: dict[str, Any], index: int) -> PromptItem:
    """One row (``prompt`` or ``messages``, optional ``id``) as a PromptItem; ``index`` numbers
    the default id. Plain extra columns are kept as ``meta``."""
    prompt = row.get("prompt")
    if prompt is not None and not (isinstance(prompt, float) and prompt != prompt):  # NaN
        if not isinstance(prompt, str):
            raise input_error(path, line, "prompt: must be a string")
        if not prompt.strip():
            raise input_error(path, line, "prompt: is empty")
        messages: tuple[tuple[str, str], ...] = (("user", prompt),)
    elif row.get("messages") is not None:
        messages = _messages(path, line, row["messages"])
    else:
        raise input_error(
            path, line, f"no usable column: expected `prompt` or `messages`, found {sorted(row)}"
        )
    rid = row.get("id")
    pid = str(rid) if rid not in (None, "") else f"{path.stem}-{index:05d}"
    meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "messages") and _is_plain(v)}
    return PromptItem(pid, messages, meta)


class NotJSON(InputError):
    """A line that does not parse as JSON (a run's last line may be one: cut short by a kill)."""


MAX_RECORD_BYTES = 8 << 20  # 2 million tokens of text or more: past any model's context


def json_record(path: Path, line: int, raw: str) -> dict[str, Any]:
    """One JSONL line as a dict, or a one-line error naming the file and line (not JSON, too
    large, nested too deeply, not an object). The line's text is never echoed."""
    if len(raw) > MAX_RECORD_BYTES:
        raise input_error(
            path,
            line,
            f"a record of {len(raw) / 2**20:.1f} MiB; records of at most "
            f"{MAX_RECORD_BYTES >> 20} MiB are read",
        )
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        raise NotJSON(f"{path}:{line}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise input_error(path, line, "JSON nested too deeply") from None
    if not isinstance(row, dict):
        raise input_error(path, line, "each line must be a JSON object")
    return row


def json_file(path: Path) -> Any:
    """A JSON document (a manifest, a result), or a one-line error naming the file."""
    from .yamlfile import MAX_DOCUMENT_BYTES

    text = read_text(path, MAX_DOCUMENT_BYTES)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise input_error(path, err.lineno, f"not valid JSON ({err.msg})") from None
    except RecursionError:
        raise input_error(path, None, "JSON nested too deeply") from None


def jsonl_rows(path: Path):
    """Yield (line number, row dict) of a JSONL file, whatever its suffix."""
    for i, line in enumerate(read_text(path).split("\n"), start=1):
        if line.strip():
            yield i, json_record(path, i, line)


def _is_plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def read_rows(path: Path):
    """Yield (line number, row dict) from a ``.jsonl``, ``.csv``, ``.parquet`` or ``.txt`` file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise input_error(
                path, None, f"not a readable parquet file ({type(err).__name__})"
            ) from None
        if not {"prompt", "messages"} & set(table.column_names):
            raise input_error(
                path,
                None,
                f"no usable column: expected `prompt` or `messages`, found {table.column_names}",
            )
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    if suffix == ".jsonl":
        yield from jsonl_rows(path)
        return
    text = read_text(path)
    if suffix == ".txt":
        for i, line in enumerate(text.split("\n"), start=1):
            if len(line) > MAX_RECORD_BYTES:
                raise input_error(path, i, f"a line of {len(line) / 2**20:.1f} MiB; too long")
            if line.strip():
                yield i, {"prompt": line.strip()}
    elif suffix == ".csv":
        csv.field_size_limit(MAX_RECORD_BYTES)
        reader = csv.DictReader(io.StringIO(text))
        try:
            header = reader.fieldnames or []
            if header and not {"prompt", "messages"} & set(header):
                raise input_error(
                    path, 1, f"no usable column: expected `prompt` or `messages`, found {header}"
                )
            for row in reader:
                if None in row:
                    raise input_error(path, reader.line_num, "more fields than the header has")
                yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}
        except csv.Error as err:  # raised before the line it is on is counted
            raise input_error(path, reader.line_num + 1, f"not valid CSV ({err})") from None


def load_prompts(spec: str, limit: int | None = None) -> list[PromptItem]:
    """Read prompts from a file or shipped set; ``limit`` keeps the first N."""
    path = resolve_prompts_path(spec)
    if not path.exists():
        names = ", ".join(shipped_promptsets())
        raise input_error(path, None, f"file not found (shipped sets: {names})")
    if path.suffix.lower() not in SUFFIXES:
        raise input_error(
            path, None, f"unsupported prompts file type {path.suffix!r}: use {', '.join(SUFFIXES)}"
        )
    items: list[PromptItem] = []
    seen: dict[str, int] = {}
    for index, (line, row) in enumerate(read_rows(path), start=1):
        item = prompt_item(path, line, row, index)
        if item.id in seen:
            raise input_error(
                path, line, f"id: duplicate id {item.id!r} (first on line {seen[item.id]})"
            )
        seen[item.id] = line
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise input_error(path, None, "no prompts (the file is empty)")
    return items


def answer_text(path: Path, line: int, row: dict[str, Any], name: str) -> str:
    """The answer in column ``name``: a string, or a TRL list of turns ending in the answer."""
    value = row.get(name)
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")  # TRL conversational: [{"role": "assistant", ...}]
    if not isinstance(value, str):
        raise input_error(
            path, line, f"{name}: must be a string or a list ending in an assistant turn"
        )
    return value


PAIR_COLUMNS = (
    ("response_a", "response_b"),
    ("chosen", "rejected"),
    ("initial_response", "final_response"),
)


def load_pairs(spec: str) -> list[tuple[str, tuple[tuple[str, str], ...], str, str]]:
    """Pairs to label from a JSONL file: ``(id, prompt messages, first, second)``.

    Each line has ``prompt`` (text, or a chat list as in ``critiques.jsonl``) or ``messages``, and
    two answers: ``response_a``/``response_b``, ``chosen``/``rejected`` (strings or TRL assistant
    turns), or ``initial_response``/``final_response`` (a ``critiques.jsonl`` record).
    """
    path = Path(spec)
    if path.suffix.lower() != ".jsonl":
        raise input_error(path, None, "pairs must be a .jsonl file")
    if not path.exists():
        raise input_error(path, None, "file not found")
    out = []
    for index, (line, row) in enumerate(read_rows(path), start=1):
        if isinstance(row.get("prompt"), list):
            row = {**row, "messages": row["prompt"], "prompt": None}
        item = prompt_item(path, line, row, index)
        cols = next((c for c in PAIR_COLUMNS if c[0] in row and c[1] in row), None)
        if cols is None:
            raise input_error(
                path,
                line,
                "no answer columns: expected response_a/response_b, "
                "chosen/rejected or initial_response/final_response",
            )
        out.append(
            (
                item.id,
                item.messages,
                answer_text(path, line, row, cols[0]),
                answer_text(path, line, row, cols[1]),
            )
        )
    if not out:
        raise input_error(path, None, "no pairs (the file is empty)")
    return out
