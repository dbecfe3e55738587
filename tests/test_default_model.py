"""The embedded default model (SmolLM2-135M-Instruct from its GGUF file): slow, real weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import read_jsonl

from cai.models import DEFAULT_LABEL, resolve_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_default_model_critiques(cli, tmp_path):
    resolved = resolve_model("default")  # converts and caches on the first call
    assert (Path(resolved.path) / "model.safetensors").is_file()
    t0 = time.perf_counter()
    assert resolve_model("default") == resolved
    assert time.perf_counter() - t0 < 1.0  # the cache is reused, not rebuilt
    out = tmp_path / "run"
    code, stdout, err = cli(
        "generate",
        "critiques",
        "--prompts",
        "red-team",
        "--limit",
        "2",
        "--rounds",
        "1",
        "--max-new-tokens",
        "40",
        "--backend",
        "hf",
        "--out",
        out,
    )
    assert code == 0, err
    records = read_jsonl(out / "critiques.jsonl")
    assert len(records) == 2
    for r in records:
        assert r["model"] == DEFAULT_LABEL
        assert len(r["initial_response"].split()) >= 5  # a real model writes words
        assert r["rounds"][0]["critique"].strip() and r["rounds"][0]["revision"].strip()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["generated_tokens_now"] > 0


@pytest.mark.slow
def test_default_model_stops_at_end_of_turn():
    from cai.backends import Sampling, make_backend

    backend = make_backend("hf", "default")
    outs = backend.generate(
        [[{"role": "user", "content": "Say hello in one word."}]], Sampling(max_new_tokens=64)
    )
    comp = outs[0][0]
    assert comp.finish_reason == "stop" and comp.tokens < 64
    assert "<|im_end|>" not in comp.text and comp.text
