"""vLLM engine against the hf engine: same greedy prompts, same text. Needs a CUDA GPU."""

from __future__ import annotations

import pytest

from cai.backends import Sampling, make_backend

CHATS = [
    [{"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "What is 12 times 11?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
]


@pytest.mark.gpu
def test_vllm_matches_hf_greedy():
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker was selected but no CUDA device is present")
    params = Sampling(max_new_tokens=24, temperature=0.0)
    hf = make_backend("hf", "default").generate(CHATS, params)
    vl = make_backend("vllm", "default", gpu_memory_utilization=0.3, dtype="float32")
    got = vl.generate(CHATS, params)
    for a, b in zip(hf, got):
        # identical tokens up to float differences: compare the first 12 words
        assert a[0].text.split()[:12] == b[0].text.split()[:12]
    probs = vl.choice_logprobs([[{"role": "user", "content": "Pick (A) or (B)."}]], ["A", "B"])
    assert len(probs[0]) == 2 and all(p <= 0 for p in probs[0])
