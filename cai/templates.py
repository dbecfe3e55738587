"""Prompt templates shipped in ``cai/prompts/``, rendered with ``StrictUndefined``.

``render("critique", request="...", round=1)`` returns the text of one user turn. A missing
variable is an error, never an empty string.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(PROMPTS_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )


@lru_cache(maxsize=4096)
def render(name: str, **variables) -> str:
    return _env().get_template(f"{name}.jinja").render(**variables).strip()
