"""Constitutions: principles a model critiques and judges itself against.

A constitution is a YAML file (see ``constitutions/harmless.yaml``)::

    name: harmless
    version: "1.0"
    extends: base.yaml          # optional: merge over another file (relative path)
    principles:
      - {id: ..., critique: ..., revision: ..., compare: ..., weight: 1.0, tags: [...]}
    few_shot:
      critique: [{prompt, response, principle (or critique_request + revision_request),
                  critique, revision}]
      compare:  [{prompt, response_a, response_b, principle | question, answer: A|B}]

``load_constitution(path)`` validates the file and everything it extends in one pass and raises a
:class:`~cai.errors.ConfigError` listing every problem as ``FILE:LINE: field: message``. With
``extends``, a child principle with a parent's id replaces it in place; new ones are appended;
few-shot examples are appended after the parent's. Principles are drawn with
:meth:`Constitution.draw`, seeded and weighted, independent of batch order.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, Problem
from .yamlfile import Locator, load_yaml, loc_to_field


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Text = Annotated[str, AfterValidator(_not_blank)]
Slug = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"), AfterValidator(_not_blank)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(_Model):
    role: Literal["system", "user", "assistant"]
    content: str


class Principle(_Model):
    id: Slug
    critique: Text
    revision: Text
    compare: Text
    weight: float = Field(1.0, gt=0, le=1e6)
    tags: tuple[str, ...] = ()


class CritiqueExample(_Model):
    prompt: Text | list[Message]
    response: Text
    principle: Slug | None = None
    critique_request: Text | None = None
    revision_request: Text | None = None
    critique: Text
    revision: Text

    @model_validator(mode="after")
    def _requests(self) -> CritiqueExample:
        explicit = self.critique_request is not None and self.revision_request is not None
        if (self.principle is None) == (not explicit):
            raise ValueError(
                "give either `principle` (an id) or both `critique_request` and `revision_request`"
            )
        return self


class CompareExample(_Model):
    prompt: Text | list[Message]
    response_a: Text
    response_b: Text
    principle: Slug | None = None
    question: Text | None = None
    answer: Literal["A", "B"]

    @model_validator(mode="after")
    def _question(self) -> CompareExample:
        if (self.principle is None) == (self.question is None):
            raise ValueError("give exactly one of `principle` (an id) or `question`")
        return self


class FewShot(_Model):
    critique: tuple[CritiqueExample, ...] = ()
    compare: tuple[CompareExample, ...] = ()


class ConstitutionFile(_Model):
    """One YAML file as written, before `extends` is resolved."""

    name: Slug
    version: Annotated[str, AfterValidator(_not_blank)]
    description: str = ""
    extends: Text | None = None
    principles: tuple[Principle, ...] = ()
    few_shot: FewShot = FewShot()

    @model_validator(mode="before")
    @classmethod
    def _version_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("version"), int | float):
            data = {**data, "version": str(data["version"])}
        return data


@dataclass(frozen=True)
class Constitution:
    """A resolved constitution: what the stages use."""

    name: str
    version: str
    description: str
    principles: tuple[Principle, ...]
    few_shot: FewShot
    files: tuple[str, ...] = field(default=(), compare=False)

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    @property
    def hash(self) -> str:
        """Hash of everything that changes what a model is asked (not file names, not comments)."""
        body = {
            "name": self.name,
            "version": self.version,
            "principles": [p.model_dump(mode="json") for p in self.principles],
            "few_shot": self.few_shot.model_dump(mode="json"),
        }
        blob = json.dumps(body, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def draw(self, seed: int, *key: Any) -> Principle:
        """A principle drawn by weight, determined by ``seed`` and ``key`` alone.

        >>> c.draw(0, "prompt-key", 1) == c.draw(0, "prompt-key", 1)
        True
        """
        rng = random.Random(f"{seed}|" + "|".join(map(str, key)))
        return rng.choices(self.principles, weights=[p.weight for p in self.principles])[0]

    def draw_many(self, k: int, seed: int, *key: Any) -> list[Principle]:
        """``k`` distinct principles (fewer if the constitution has fewer), weighted, seeded."""
        rng = random.Random(f"{seed}|" + "|".join(map(str, key)))
        pool = list(self.principles)
        out: list[Principle] = []
        while pool and len(out) < k:
            pick = rng.choices(range(len(pool)), weights=[p.weight for p in pool])[0]
            out.append(pool.pop(pick))
        return out

    def info(self) -> dict[str, Any]:
        """What records and manifests say about the constitution used."""
        return {
            "name": self.name,
            "version": self.version,
            "hash": self.hash,
            "files": list(self.files),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "principles": [
                p.model_dump(mode="json", exclude_defaults=True) for p in self.principles
            ],
            "few_shot": self.few_shot.model_dump(mode="json", exclude_none=True),
        }


def _pydantic_problems(err: ValidationError, file: str, where: Locator) -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # drop pydantic's union branch names ("str", "list[Message]") from the path
        loc = tuple(p for p in loc if p not in ("str", "list[Message]", "float", "int"))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        msg = msg.removeprefix("Value error, ")
        problems.append(Problem(file, where.line(loc), loc_to_field(loc), msg))
    # a union failing on both branches yields two errors at one place; keep the first
    unique: dict[tuple[int | None, str], Problem] = {}
    for p in problems:
        unique.setdefault((p.line, p.field), p)
    return list(unique.values())


@dataclass
class _Loaded:
    path: Path
    spec: ConstitutionFile
    where: Locator


def _load_chain(path: Path, stack: tuple[Path, ...], problems: list[Problem]) -> list[_Loaded]:
    """Files from the furthest ancestor to ``path``; problems are appended, not raised."""
    try:
        data, where = load_yaml(path)
    except ConfigError as err:
        problems += err.problems
        return []
    file = str(path)
    if not isinstance(data, dict):
        problems.append(Problem(file, 1, "", "a constitution must be a YAML mapping of keys"))
        return []
    try:
        spec = ConstitutionFile.model_validate(data)
    except ValidationError as err:
        problems += _pydantic_problems(err, file, where)
        spec = None
    seen: dict[str, int] = {}
    principles = data.get("principles")
    for i, p in enumerate(principles if isinstance(principles, list) else []):
        pid = p.get("id") if isinstance(p, dict) else None
        if isinstance(pid, str):
            if pid in seen:
                problems.append(
                    Problem(
                        file,
                        where.line(("principles", i, "id")),
                        f"principles[{i}].id",
                        f"duplicate principle id {pid!r} (also principles[{seen[pid]}])",
                    )
                )
            seen.setdefault(pid, i)
    chain: list[_Loaded] = []
    parent = data.get("extends")
    if isinstance(parent, str) and parent.strip():
        target = (path.parent / parent).resolve()
        line = where.line(("extends",))
        if target in stack or target == path.resolve():
            cycle = " -> ".join(str(s) for s in (*stack, path.resolve(), target))
            problems.append(Problem(file, line, "extends", f"cycle: {cycle}"))
        elif not target.is_file():
            problems.append(Problem(file, line, "extends", f"file not found: {parent}"))
        else:
            chain = _load_chain(target, (*stack, path.resolve()), problems)
    if spec is not None:
        chain.append(_Loaded(path, spec, where))
    return chain


def _check_references(chain: list[_Loaded], ids: set[str], problems: list[Problem]) -> None:
    for item in chain:
        for kind in ("critique", "compare"):
            for i, ex in enumerate(getattr(item.spec.few_shot, kind)):
                if ex.principle is not None and ex.principle not in ids:
                    loc = ("few_shot", kind, i, "principle")
                    problems.append(
                        Problem(
                            str(item.path),
                            item.where.line(loc),
                            loc_to_field(loc),
                            f"no principle with id {ex.principle!r}",
                        )
                    )


def load_constitution(path: str | Path) -> Constitution:
    """Load, validate and resolve a constitution file (or a shipped one by name: ``harmless``).

    Every problem in the file and those it extends is reported at once.
    """
    path = resolve_constitution_path(str(path))
    problems: list[Problem] = []
    chain = _load_chain(path, (), problems)
    merged: dict[str, Principle] = {}
    critique: list[CritiqueExample] = []
    compare: list[CompareExample] = []
    for item in chain:
        for p in item.spec.principles:
            merged[p.id] = p
        critique += item.spec.few_shot.critique
        compare += item.spec.few_shot.compare
    if not problems and chain:
        if not merged:
            top = chain[-1]
            problems.append(
                Problem(
                    str(top.path),
                    top.where.line(("principles",)),
                    "principles",
                    "at least one principle is required",
                )
            )
        _check_references(chain, set(merged), problems)
    if problems or not chain:
        raise ConfigError(problems)
    top = chain[-1].spec
    return Constitution(
        name=top.name,
        version=top.version,
        description=top.description.strip(),
        principles=tuple(merged.values()),
        few_shot=FewShot(critique=tuple(critique), compare=tuple(compare)),
        files=tuple(str(c.path) for c in chain),
    )


def validate_files(paths: list[str | Path]) -> tuple[list[Constitution], list[Problem]]:
    """Validate many files; return the good ones and every problem of the bad ones."""
    good: list[Constitution] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            good.append(load_constitution(path))
        except ConfigError as err:
            problems += err.problems
    return good, problems


SHIPPED_DIR = Path(__file__).resolve().parent / "constitutions"  # also ./constitutions


def resolve_constitution_path(name: str) -> Path:
    """A path as given, or the short name of a shipped constitution (``harmless``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in name:
        return path
    shipped = SHIPPED_DIR / f"{name}.yaml"
    return shipped if shipped.is_file() else path
