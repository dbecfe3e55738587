"""Read a YAML file safely and remember where every value came from.

``load_yaml(path)`` returns the data (``yaml.safe_load`` semantics) and a :class:`Locator` that maps
a path of keys and indices, e.g. ``("principles", 3, "critique")``, to the line it is on, so that
validation errors can say ``constitutions/x.yaml:42: principles[3].critique: ...``. A key missing
from a mapping is reported at the mapping's own line. Duplicate keys, which ``safe_load`` would
silently collapse, are reported as problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, Problem


def read_text(path: Path) -> str:
    """The file's text, or a one-line error naming it (missing, a folder, not UTF-8)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(str(path), None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(str(path), None, "", "is a directory, not a file")]) from None
    except OSError as err:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {err.strerror}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            [Problem(str(path), line, "", f"not UTF-8 text (byte {err.start})")]
        ) from None


class Locator:
    """Maps a key path to the 1-based line of the YAML node it names."""

    def __init__(self, root: yaml.Node | None):
        self.root = root

    def line(self, loc: tuple[Any, ...]) -> int | None:
        node = self.root
        if node is None:
            return None
        best = node.start_mark.line + 1
        for part in loc:
            child = _child(node, part)
            if child is None:
                break
            node = child
            best = node.start_mark.line + 1
        return best


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        if 0 <= part < len(node.value):
            return node.value[part]
    return None


def _duplicate_keys(node: yaml.Node | None, path: str, file: str) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            sub = f"{path}.{name}" if path else name
            if name in seen:
                problems.append(
                    Problem(file, key.start_mark.line + 1, sub, "duplicate key (listed twice)")
                )
            seen.add(name)
            problems += _duplicate_keys(value, sub, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, f"{path}[{i}]", file)
    return problems


def load_yaml(path: Path) -> tuple[Any, Locator]:
    """Parse ``path`` with the safe loader; raise ConfigError with file:line on any problem."""
    text = read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError([Problem(str(path), line, "", f"malformed YAML: {reason}")]) from None
    problems = _duplicate_keys(node, "", str(path))
    if problems:
        raise ConfigError(problems)
    return data, Locator(node)


def loc_to_field(loc: tuple[Any, ...]) -> str:
    """``("principles", 3, "id")`` -> ``principles[3].id``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
