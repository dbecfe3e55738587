"""The Python API: a stage runs from Python with the public names alone, no command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_prompts

ROOT = Path(__file__).resolve().parent.parent


def test_a_stage_runs_from_python_without_the_command_line(tiny_model, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    script = textwrap.dedent(
        f"""
        import json, sys
        from cai import CritiqueConfig, load_constitution, run_critiques

        cons = load_constitution("harmless")
        cfg = CritiqueConfig(
            constitution="harmless", prompts={str(prompts)!r}, model={tiny_model!r},
            rounds=1, max_new_tokens=4, backend="hf", out={str(tmp_path / "run")!r},
        )
        first = run_critiques(cfg)
        again = run_critiques(cfg)
        loaded = sorted(m for m in sys.modules if m.startswith("cai.cli") or m == "typer")
        print(json.dumps({{"first": first["records"], "resumed": again["resumed_from"],
                           "principles": len(cons.principles), "cli": loaded}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first"] == 2 and result["resumed"] == 2 and result["principles"] > 0
    assert result["cli"] == []  # the library ran the stage; nothing of the command line loaded
    assert len((tmp_path / "run" / "sft.jsonl").read_text().splitlines()) == 2


def test_configs_refuse_bad_values_where_they_are_built():
    from pydantic import ValidationError

    from cai import CritiqueConfig, DPOConfig

    with pytest.raises(ValidationError, match="rounds"):
        CritiqueConfig(rounds=0)
    with pytest.raises(ValidationError, match="beta"):
        DPOConfig(data="d.jsonl", out="o", beta=0)
    with pytest.raises(ValidationError, match="roundz"):
        CritiqueConfig(roundz=2)


def test_no_library_module_imports_the_command_line():
    for path in (ROOT / "cai").rglob("*.py"):
        rel = path.relative_to(ROOT / "cai")
        if rel.parts[0] == "cli" or rel.name == "__main__.py":
            continue
        text = path.read_text()
        for needle in ("from .cli", "from ..cli", "cai.cli", "import typer"):
            assert needle not in text, f"{rel} imports the command line ({needle})"
