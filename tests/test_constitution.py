"""Constitution schema, `extends`, validation messages with file:line, sampling, hashing."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from cai.constitution import load_constitution

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "constitutions").glob("*.yaml"))

GOOD = """\
name: tiny
version: "1"
principles:
  - id: kind
    critique: Say where the answer was unkind.
    revision: Rewrite it kindly.
    compare: Which answer is kinder?
  - id: safe
    critique: Say where the answer was unsafe.
    revision: Rewrite it safely.
    compare: Which answer is safer?
    weight: 3
few_shot:
  critique:
    - prompt: Hi
      response: Go away.
      principle: kind
      critique: It was rude.
      revision: Hello! How can I help?
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_constitutions_validate(cli):
    assert len(SHIPPED) >= 3
    code, out, err = cli("constitution", "validate", *SHIPPED)
    assert code == 0, err
    assert out.startswith("ok: 3 constitution(s)")


def test_default_constitution_is_broad():
    c = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    assert len(c.principles) >= 12
    assert c.few_shot.critique and c.few_shot.compare
    text = " ".join(p.critique + p.revision for p in c.principles).lower()
    assert "refus" in text  # harmless but not evasive: over-refusal is itself critiqued


def test_extends_merges_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", GOOD)
    child = write(
        tmp_path,
        "child.yaml",
        """\
        name: child
        version: "2"
        extends: base.yaml
        principles:
          - id: safe
            critique: Overridden critique.
            revision: Overridden revision.
            compare: Overridden compare?
          - id: brief
            critique: Too long?
            revision: Shorten it.
            compare: Which is briefer?
        """,
    )
    c = load_constitution(child)
    assert [p.id for p in c.principles] == ["kind", "safe", "brief"]
    assert c.principle("safe").critique == "Overridden critique."
    assert c.name == "child" and len(c.few_shot.critique) == 1
    assert len(c.files) == 2


def test_helpful_harmless_extends_harmless():
    base = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    c = load_constitution(ROOT / "constitutions" / "helpful-harmless.yaml")
    assert {p.id for p in base.principles} <= {p.id for p in c.principles}
    assert len(c.principles) > len(base.principles)


BAD_CASES = {
    "malformed": (
        'name: x\nversion: "1"\nprinciples:\n  - id: a\n   critique: b\n',
        5,
        "malformed YAML",
    ),
    "unknown_key": (
        GOOD.replace("    weight: 3\n", "    weight: 3\n    colour: red\n"),
        13,
        "principles[1].colour: unknown key",
    ),
    "missing_key": (
        GOOD.replace("    compare: Which answer is kinder?\n", ""),
        4,
        "principles[0].compare: required key is missing",
    ),
    "wrong_type": (GOOD.replace("weight: 3", "weight: heavy"), 12, "principles[1].weight:"),
    "empty_id": (GOOD.replace("id: kind", 'id: ""'), 4, "principles[0].id:"),
    "duplicate_id": (
        GOOD.replace("id: safe", "id: kind"),
        8,
        "principles[1].id: duplicate principle id 'kind'",
    ),
    "empty_text": (
        GOOD.replace("Rewrite it kindly.", '"   "'),
        6,
        "principles[0].revision: must not be empty",
    ),
    "no_principles": ('name: x\nversion: "1"\nprinciples: []\n', 3, "at least one principle"),
    "bad_reference": (
        GOOD.replace("principle: kind", "principle: nope"),
        17,
        "few_shot.critique[0].principle: no principle with id 'nope'",
    ),
    "duplicate_yaml_key": ("name: a\nname: b\n" + GOOD.split("\n", 1)[1], 2, "name: duplicate key"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_constitution_reports_file_line_field(cli, tmp_path, case):
    text, line, fragment = BAD_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    code, out, err = cli("constitution", "validate", path)
    assert code == 2
    assert out == ""
    first = err.strip().splitlines()[0]
    assert first.startswith(f"{path}:{line}: "), err
    assert fragment in err


def test_all_problems_listed_at_once(cli, tmp_path):
    text = GOOD.replace("id: safe", "id: kind").replace("weight: 3", "weight: -1")
    text = text.replace("Rewrite it kindly.", '""')
    a = write(tmp_path, "a.yaml", text)
    b = write(tmp_path, "b.yaml", "name: [oops\n")
    code, _, err = cli("constitution", "validate", a, b)
    lines = err.strip().splitlines()
    assert code == 2
    assert len(lines) == 4, err
    assert sum(line.startswith(str(a)) for line in lines) == 3
    assert lines[-1].startswith(f"{b}:")


def test_non_utf8_file(cli, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("kinder", "kind\xe9r").encode("latin-1"))
    code, _, err = cli("constitution", "validate", path)
    assert code == 2 and f"{path}:7: " in err and "UTF-8" in err


def test_extends_missing_and_cycle(cli, tmp_path):
    missing = write(tmp_path, "m.yaml", 'name: m\nversion: "1"\nextends: nowhere.yaml\n')
    code, _, err = cli("constitution", "validate", missing)
    assert code == 2 and f"{missing}:3: extends: file not found: nowhere.yaml" in err
    write(tmp_path, "x.yaml", 'name: x\nversion: "1"\nextends: y.yaml\n')
    y = write(tmp_path, "y.yaml", 'name: y\nversion: "1"\nextends: x.yaml\n')
    code, _, err = cli("constitution", "validate", y)
    assert code == 2 and "extends: cycle:" in err and err.count("\n") == 1


def test_show_is_readable(cli):
    code, out, _ = cli("constitution", "show", ROOT / "constitutions" / "helpful-harmless.yaml")
    assert code == 0
    assert "helpful-harmless" in out and "critique:" in out and "compare:" in out
    assert "harmless.yaml" in out.splitlines()[0]


def test_draw_is_seeded_and_weighted(tmp_path):
    c = load_constitution(write(tmp_path, "c.yaml", GOOD))
    assert c.draw(7, "k", 1) == c.draw(7, "k", 1)
    draws = Counter(c.draw(0, "prompt", i).id for i in range(4000))
    assert 0.72 < draws["safe"] / 4000 < 0.78  # weight 3 against 1
    picks = c.draw_many(2, 0, "x")
    assert len({p.id for p in picks}) == 2


def test_hash_changes_with_content_only(tmp_path):
    a = load_constitution(write(tmp_path, "a.yaml", GOOD))
    b = load_constitution(write(tmp_path, "b.yaml", "# a comment\n" + GOOD))
    c = load_constitution(write(tmp_path, "c.yaml", GOOD.replace("kinder", "nicer")))
    assert a.hash == b.hash != c.hash
