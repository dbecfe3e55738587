"""Import human preference pairs written as Human:/Assistant: transcripts.

Public preference datasets in this style hold one JSON object per line,
``{"chosen": "<transcript>", "rejected": "<transcript>"}``, where each transcript is the whole
conversation: ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: ..."``.
:func:`import_hh` turns each line into one record in cai's preference format (TRL's
conversational preference columns plus cai's metadata)::

    {"id": "<file stem>-<line>", "prompt": [{"role": "user", "content": ...}, ...],
     "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}],
     "p_chosen": 1.0, "margin": 1.0, "source": "human", "principles": [],
     "position_consistent": True}

What it handles: transcripts with or without the leading blank line, Windows line endings,
surrounding whitespace in turns, blank lines in the file (skipped). Each line that cannot be
used is skipped and reported as ``FILE:LINE: reason``: not JSON, no ``chosen``/``rejected``
strings, text before the first marker, an empty turn, no Human turn, not ending with an
Assistant turn, a final Assistant turn not preceded by a Human turn, chosen and rejected
disagreeing on the conversation before their final answers, or identical final answers.

What it does not handle: a literal ``\\n\\nHuman:`` or ``\\n\\nAssistant:`` inside a turn's text
is read as a new turn (the format cannot tell them apart); consecutive turns of the same role
earlier in the conversation are kept as they are, not merged; other formats (separate
``prompt`` columns, message lists) are not this module's business. The file is read whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError
from .inputs import json_record
from .store import write_jsonl_atomic
from .yamlfile import read_text

Turn = tuple[str, str]  # (role, content)

_MARKER = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class _Skip(Exception):
    """A line that cannot be converted; ``str()`` is the reason."""


def _split_turns(transcript: str) -> list[Turn]:
    """The transcript's turns as (role, content), roles ``user``/``assistant``, content stripped.

    >>> _split_turns("Human: hi\\n\\nAssistant:  hello ")
    [('user', 'hi'), ('assistant', 'hello')]
    """
    text = transcript.replace("\r\n", "\n")
    parts = _MARKER.split(text)
    if parts[0].strip():
        raise _Skip("text before the first 'Human:' or 'Assistant:' marker")
    return [(_ROLES[role], content.strip()) for role, content in zip(parts[1::2], parts[2::2])]


def _check_turns(turns: list[Turn], which: str) -> None:
    if not any(role == "user" for role, _ in turns):
        raise _Skip(f"{which}: no Human turn")
    if turns[-1][0] != "assistant":
        raise _Skip(f"{which}: does not end with an Assistant turn")
    if len(turns) < 2 or turns[-2][0] != "user":
        raise _Skip(f"{which}: final Assistant turn does not follow a Human turn")
    for i, (_, content) in enumerate(turns, start=1):
        if not content:
            raise _Skip(f"{which}: turn {i} is empty")


def _parse_line(obj: dict[str, Any]) -> tuple[str, str]:
    for name in ("chosen", "rejected"):
        if not isinstance(obj.get(name), str):
            raise _Skip(f"{name}: missing or not a string")
    return obj["chosen"], obj["rejected"]


def _chat(turns: Iterable[Turn]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def _convert_pair(chosen: str, rejected: str) -> dict[str, Any]:
    """One preference record (without ``id``) from a chosen and a rejected transcript."""
    chosen_turns = _split_turns(chosen)
    rejected_turns = _split_turns(rejected)
    _check_turns(chosen_turns, "chosen")
    _check_turns(rejected_turns, "rejected")
    if chosen_turns[:-1] != rejected_turns[:-1]:
        raise _Skip("chosen and rejected differ before their final Assistant turn")
    if chosen_turns[-1] == rejected_turns[-1]:
        raise _Skip("chosen and rejected final answers are identical")
    return {
        "prompt": _chat(chosen_turns[:-1]),
        "chosen": _chat(chosen_turns[-1:]),
        "rejected": _chat(rejected_turns[-1:]),
        "p_chosen": 1.0,
        "margin": 1.0,
        "source": "human",
        "principles": [],
        "position_consistent": True,
    }


def _read(path: Path) -> str:
    try:
        return read_text(path)
    except ConfigError as err:
        raise InputError(str(err)) from None


def import_hh(path: Path) -> tuple[list[dict], list[str]]:
    """Return (records, problems).

    ``records`` are the usable lines in file order; ``problems`` name each skipped line as
    ``FILE:LINE: reason``. Raises :class:`InputError` if the file cannot be read or no line
    converts.
    """
    path = Path(path)
    records: list[dict] = []
    problems: list[str] = []
    # split on "\n" only: str.splitlines() would also split on U+2028 etc. inside JSON strings
    for line_no, raw in enumerate(_read(path).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = _convert_pair(*_parse_line(json_record(path, line_no, raw)))
        except _Skip as why:
            problems.append(f"{path}:{line_no}: {why}")
            continue
        records.append({"id": f"{path.stem}-{line_no}", **record})
    if not records:
        first = problems[0] if problems else "the file has no non-blank lines"
        raise InputError(f"{path}: no usable pairs ({len(problems)} problems; first: {first})")
    return records, problems


def write_preferences(records: Iterable[dict[str, Any]], out: Path) -> None:
    """Write ``records`` to ``out`` as JSONL, atomically (a temporary file and a rename)."""
    write_jsonl_atomic(Path(out), records)
