"""Convert published constitution formats to cai's YAML, keeping their wording.

- ``anthropic``: the critique/revision instruction file of the Constitutional AI paper's
  repository, a JSON object ``{key: {"prompt": ["...\\n\\nCritique:"], "edit_request":
  "...\\n\\nRevision:"}}``. Optionally with its list of comparison principles (a JSON list of
  strings, each ending in "Options:") and its few-shot file (a JSON list of
  ``Human:/Assistant:/CritiqueRequest:/Critique:/RevisionRequest:/Revision:`` transcripts).
- ``hf``: the Hugging Face llm-swarm file, ``{"constitutions": [{"critic", "revision"}],
  "system_chat": [[6 chat turns], ...]}`` (or just the list of ``{"critic", "revision"}``).

Markers (``CritiqueRequest:``, ``RevisionRequest:``, ``Critique:``, ``Revision:``) are stripped at
both ends of every request, as is a comparison question's trailing ``Options:``. A
format without comparison questions gets :data:`GENERIC_COMPARE` and the caller is told so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .constitution import ConstitutionFile
from .errors import InputError
from .yamlfile import MAX_DOCUMENT_BYTES, read_text

GENERIC_COMPARE = (
    "Which of these assistant responses avoids harm better while still helping with whatever "
    "part of the request is legitimate?"
)
_MARKER = r"(CritiqueRequest|RevisionRequest|Critique|Revision)\s*:"
_MARKERS = re.compile(rf"^\s*{_MARKER}\s*", re.I)
# the paper's requests end in "\n\nCritique:" / "\n\nRevision:", the cue the model answers after
_TRAILING = re.compile(rf"(^|\s+){_MARKER}\s*$", re.I)
_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")


def _strip(text: str) -> str:
    """``"CritiqueRequest: Is it kind?\\n\\nCritique:"`` -> ``"Is it kind?"``: markers at both ends
    (and a comparison question's trailing ``Options:``) go."""
    text = _MARKERS.sub("", text.strip())
    text = _TRAILING.sub("", text)
    return re.sub(r"\s*Options:\s*$", "", text).strip()


def _json(path: Path) -> Any:
    try:
        return json.loads(read_text(path, MAX_DOCUMENT_BYTES))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower() or "principle"


def _anthropic_few_shot(path: Path) -> list[dict[str, Any]]:
    data = _json(path)
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise InputError(f"{path}: expected a JSON list of transcript strings")
    examples = []
    for n, transcript in enumerate(data):
        parts = _TURN.split("\n\n" + transcript.strip())
        turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
        fields = {k: v for k, v in turns if k not in ("Human", "Assistant")}
        convo = [(k, v) for k, v in turns if k in ("Human", "Assistant") and v]
        if (
            not {"CritiqueRequest", "Critique", "RevisionRequest", "Revision"} <= set(fields)
            or len(convo) < 2
            or convo[-1][0] != "Assistant"
        ):
            raise InputError(
                f"{path}: transcript {n} lacks a Human/Assistant exchange or a "
                "CritiqueRequest/Critique/RevisionRequest/Revision"
            )
        chat = [
            {"role": "user" if k == "Human" else "assistant", "content": v} for k, v in convo[:-1]
        ]
        examples.append(
            {
                "prompt": chat[0]["content"] if len(chat) == 1 else chat,
                "response": convo[-1][1],
                "critique_request": fields["CritiqueRequest"],
                "revision_request": fields["RevisionRequest"],
                "critique": fields["Critique"],
                "revision": fields["Revision"],
            }
        )
    return examples


def import_anthropic(path: Path, compare: Path | None = None, few_shot: Path | None = None) -> dict:
    data = _json(path)
    if not isinstance(data, dict) or not data:
        raise InputError(
            f"{path}: expected a JSON object mapping a name to "
            '{"prompt": [...], "edit_request": "..."}'
        )
    questions: list[str] = []
    if compare is not None:
        raw = _json(compare)
        if not isinstance(raw, list) or not raw or not all(isinstance(q, str) for q in raw):
            raise InputError(f"{compare}: expected a non-empty JSON list of strings")
        questions = [_strip(q) for q in raw]
    principles = []
    for name, entry in data.items():
        if not isinstance(entry, dict) or "prompt" not in entry or "edit_request" not in entry:
            raise InputError(f"{path}: {name}: expected keys `prompt` and `edit_request`")
        requests = entry["prompt"] if isinstance(entry["prompt"], list) else [entry["prompt"]]
        for j, request in enumerate(requests):
            i = len(principles)
            principles.append(
                {
                    "id": _slug(str(name)) + (f"-{j + 1}" if j else ""),
                    "critique": _strip(request),
                    "revision": _strip(entry["edit_request"]),
                    "compare": questions[i % len(questions)] if questions else GENERIC_COMPARE,
                }
            )
    out: dict[str, Any] = {"name": _slug(path.stem), "version": "1", "principles": principles}
    if few_shot is not None:
        out["few_shot"] = {"critique": _anthropic_few_shot(few_shot)}
    return out


def import_hf(path: Path) -> dict:
    data = _json(path)
    entries, chats = (
        (data, [])
        if isinstance(data, list)
        else (data.get("constitutions"), data.get("system_chat") or [])
        if isinstance(data, dict)
        else (None, [])
    )
    if not isinstance(entries, list) or not entries:
        raise InputError(f'{path}: expected {{"constitutions": [{{"critic", "revision"}}, ...]}}')
    principles = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"critic", "revision"} <= set(e):
            raise InputError(f"{path}: constitutions[{i}]: expected keys `critic` and `revision`")
        principles.append(
            {
                "id": f"hf-{i + 1:02d}",
                "critique": _strip(e["critic"]),
                "revision": _strip(e["revision"]),
                "compare": GENERIC_COMPARE,
            }
        )
    examples = []
    for i, chat in enumerate(chats):
        if not isinstance(chat, list) or len(chat) < 6:
            raise InputError(f"{path}: system_chat[{i}]: expected a chat of at least 6 turns")
        *context, answer, crit_req, crit, rev_req, rev = [m["content"] for m in chat]
        prompt = [{"role": m["role"], "content": m["content"]} for m in chat[: len(context)]]
        examples.append(
            {
                "prompt": prompt[0]["content"] if len(prompt) == 1 else prompt,
                "response": answer,
                "critique_request": _strip(crit_req),
                "critique": crit,
                "revision_request": _strip(rev_req),
                "revision": rev,
            }
        )
    out: dict[str, Any] = {"name": _slug(path.stem), "version": "1", "principles": principles}
    if examples:
        out["few_shot"] = {"critique": examples}
    return out


def convert(
    path: Path,
    fmt: str,
    compare: Path | None = None,
    few_shot: Path | None = None,
    name: str | None = None,
) -> tuple[str, bool]:
    """YAML text of the converted constitution, and whether generic compare questions were used."""
    if fmt == "anthropic":
        data = import_anthropic(path, compare, few_shot)
    elif fmt == "hf":
        if compare or few_shot:
            raise InputError("--compare and --few-shot go with --format anthropic")
        data = import_hf(path)
    else:
        raise InputError(f"unknown format {fmt!r}: choose anthropic or hf")
    if name:
        data["name"] = name
    try:
        ConstitutionFile.model_validate(data)
    except ValidationError as err:
        raise InputError(
            f"{path}: converted constitution is invalid: {err.errors()[0]['msg']}"
        ) from None
    generic = any(p["compare"] == GENERIC_COMPARE for p in data["principles"])
    header = f"# Imported from {path.name} ({fmt} format) by `cai constitution import`.\n"
    if generic:
        header += (
            "# The source has no comparison questions: `compare` is a generic question; edit it.\n"
        )
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    return header + body, generic
