"""`cai validate` and `cai run`: shipped pipelines validate; a whole chain runs and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "pipelines").glob("*.yaml"))


def test_every_shipped_pipeline_validates_and_says_how_to_run(cli):
    assert {p.stem for p in SHIPPED} >= {"quickstart", "paper", "dpo"}
    code, out, err = cli("validate", *SHIPPED)
    assert code == 0, err
    for p in SHIPPED:
        assert p.read_text().startswith("#") and "cai run pipelines/" in p.read_text()


def test_bad_pipeline_lists_every_problem(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "out: runs/bad\n"
        "stages:\n"
        "  - stage: critiques\n"
        "    limitt: 3\n"
        "  - stage: sft\n"
        "    data: '{nowhere}/sft.jsonl'\n"
        "    max_steps: lots\n"
        "  - stage: teleport\n"
    )
    code, _, err = cli("validate", bad)
    lines = err.strip().splitlines()
    assert code == 2
    assert f"{bad}:5: stages[0].limitt: unknown option" in lines
    assert any(x.startswith(f"{bad}:7: stages[1].data:") and "{nowhere}" in x for x in lines)
    assert any(x.startswith(f"{bad}:8: stages[1].max_steps:") for x in lines)
    assert any(x.startswith(f"{bad}:9: stages[2].stage: stage must be one of") for x in lines)


def test_quickstart_runs_end_to_end_then_resumes(cli, tiny_model, tmp_path):
    out = tmp_path / "qs"
    sets = [
        f"out={out}",
        f"defaults.model={tiny_model}",
        f"preferences.feedback={tiny_model}",
        "critiques.limit=3",
        "preferences.limit=3",
        "rloo.limit=2",
        "sft.max_steps=2",
        "rm.max_steps=2",
        "rloo.max_steps=1",
        "critiques.max_new_tokens=6",
        "preferences.max_new_tokens=6",
        "rloo.max_completion_length=6",
    ]
    args = ["run", ROOT / "pipelines" / "quickstart.yaml"]
    for s in sets:
        args += ["--set", s]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "critiques ran, sft ran, preferences ran, rm ran, rloo ran" in stdout
    assert len(read_jsonl(out / "critiques" / "critiques.jsonl")) == 3
    assert (out / "sft" / "model.safetensors").is_file()
    assert read_jsonl(out / "preferences" / "preferences.jsonl")
    assert (out / "rm" / "model.safetensors").is_file()
    assert (out / "rloo" / "model.safetensors").is_file()
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "critiques skipped, sft skipped, preferences skipped, rm skipped, rloo skipped" in stdout


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ("nokey", "expected key.sub=value"),
        ("teleport.limit=3", "no stage named 'teleport'"),
    ],
)
def test_bad_overrides(cli, bad, fragment):
    code, _, err = cli("run", ROOT / "pipelines" / "quickstart.yaml", "--set", bad)
    assert code == 2 and fragment in err


def test_dpo_pipeline_runs_on_tiny_models(cli, tiny_model, tmp_path):
    out = tmp_path / "dpo"
    sets = [
        f"out={out}",
        f"defaults.model={tiny_model}",
        f"preferences.feedback={tiny_model}",
        "critiques.limit=3",
        "critiques.max_new_tokens=6",
        "dpo.max_steps=1",
        "dpo.min_margin=0.0",
        "preferences.ensemble=1",
        f"compare.baseline={tiny_model}",
        f"compare.judge={tiny_model}",
        "compare.limit=2",
        "compare.ensemble=1",
        "compare.max_new_tokens=6",
        "compare.resamples=50",
    ]
    args = ["run", ROOT / "pipelines" / "dpo.yaml"]
    for s in sets:
        args += ["--set", s]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "critiques ran, preferences ran, dpo ran, compare ran" in stdout
    assert (out / "dpo" / "model.safetensors").is_file()
    result = json.loads((out / "compare" / "compare.json").read_text())
    assert [c["name"] for c in result["contestants"]][1] == "dpo"
    assert result["prompts"] == 2 and len(result["pairs"]) == 1
    # one audit shows every stage, the comparison included
    code, stdout, err = cli("audit", out)
    assert code == 0, err
    for stage in ("critiques", "preference labels", "model comparison"):
        assert stage in stdout
