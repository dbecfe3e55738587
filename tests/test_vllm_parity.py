"""vLLM against the hf engine: same greedy prompts, same text, same option log-probs. Needs a CUDA
GPU and `pip install -e '.[vllm]'`; left out of the default run (marker `gpu`).

Two ways in: the offline engine (``--backend vllm``) and ``vllm serve`` driven by the openai
backend (``--backend openai``), the latter being how many GPUs are used.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.backends import Sampling, make_backend
from cai.templates import render

CHATS = [
    [{"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "What is 12 times 11?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
]
PICK = [{"role": "user", "content": "Which is kinder? (A) Thank you. (B) Go away."}]


def _need_gpu():
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker was selected but no CUDA device is present")


def _same_greedy(hf, other) -> None:
    params = Sampling(max_new_tokens=24, temperature=0.0)
    for a, b in zip(hf.generate(CHATS, params), other.generate(CHATS, params)):
        # identical tokens up to float differences: compare the first 12 words
        assert a[0].text.split()[:12] == b[0].text.split()[:12]


def _same_option_logprobs(hf, other) -> None:
    prompt = hf.render(PICK) + render("compare_answer")
    want = hf.choice_logprobs([prompt], ["A", "B"])[0]
    got = other.choice_logprobs([prompt], ["A", "B"])[0]
    assert all(v <= 0 for v in got)
    assert got == pytest.approx(want, abs=0.05)


@pytest.mark.gpu
def test_vllm_matches_hf_greedy():
    _need_gpu()
    hf = make_backend("hf", "default")
    vl = make_backend("vllm", "default", gpu_memory_utilization=0.3, dtype="float32")
    _same_greedy(hf, vl)
    _same_option_logprobs(hf, vl)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
def test_openai_backend_on_vllm_serve_matches_hf(tmp_path):
    """`vllm serve` started here on loopback; the openai backend reads its top log-probs."""
    _need_gpu()
    import httpx

    from cai.models import resolve_model

    path = resolve_model("default").path
    port = _free_port()
    log = open(tmp_path / "vllm.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "vllm"), "serve", path]
        + ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
        + ["--gpu-memory-utilization", "0.3", "--max-logprobs", "20"],
        stdout=log,
        stderr=log,
        env={**os.environ},
        preexec_fn=lambda: ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL),
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm serve not ready in 600 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        served = make_backend("openai", path, base_urls=[f"http://127.0.0.1:{port}/v1"])
        hf = make_backend("hf", "default")
        _same_greedy(hf, served)
        _same_option_logprobs(hf, served)
    finally:
        proc.kill()
        proc.wait(60)
        log.close()
