"""The hf engine on a tiny model: batching, samples, shared-prefix reuse, option log-probs."""

from __future__ import annotations

import math

import pytest

from cai.backends import Sampling, make_backend

FEW_SHOT = [
    {"role": "user", "content": "An example question about gardens and the weather in spring?"},
    {"role": "assistant", "content": "An example answer that is long enough to share a prefix."},
    {"role": "user", "content": "And a critique request that every row of the batch repeats."},
    {"role": "assistant", "content": "A critique."},
]


def chats(n: int):
    return [
        FEW_SHOT + [{"role": "user", "content": f"Row {i} " + "tail " * (i % 5)}] for i in range(n)
    ]


@pytest.fixture(scope="module")
def backend(tiny_model):
    # float32: exact equalities between batchings hold only without bf16 rounding (whose
    # agreement has tests of its own)
    return make_backend("hf", tiny_model, max_batch_size=3, dtype="float32")


def test_shared_prefix_reuse_gives_identical_greedy_text(tiny_model):
    """The prefix held once (our attention) against every row computing it: same text in fp32;
    in bf16 (rounded in another order) the option log-probs stay close."""
    params = Sampling(max_new_tokens=12)
    prompts = [c + [{"role": "assistant", "content": "The answer is ("}] for c in chats(7)]
    for dtype in ("float32", "bfloat16"):
        backend = make_backend("hf", tiny_model, max_batch_size=3, dtype=dtype)
        assert backend.shares_prefix
        ids = backend.encode([backend.render(c) for c in chats(7)])
        assert backend.shared_prefix_length(ids) >= 32  # the few-shot block is shared
        texts = [backend.render(c) for c in prompts]
        with_cache = backend.generate(chats(7), params)
        lp_with = backend.choice_logprobs(texts, ["A", "B"])
        backend.prefix_cache = False
        without = backend.generate(chats(7), params)
        lp_without = backend.choice_logprobs(texts, ["A", "B"])
        gap = max(abs(x - y) for r, s in zip(lp_with, lp_without) for x, y in zip(r, s))
        if dtype == "float32":
            assert [c[0].text for c in with_cache] == [c[0].text for c in without]
            assert all(c[0].text for c in with_cache)
            assert gap < 1e-4
        else:
            assert gap < 0.1


def test_a_prompt_extending_the_last_calls_rows_reuses_their_keys_and_values(tiny_model):
    """Critique then revision: the revision prompt is the critique prompt, the critique and a
    new request, so its first tokens' keys and values are those the critique call computed.
    Reading them back gives the same greedy text (fp32) as computing every token again."""
    params = Sampling(max_new_tokens=10)
    reusing = make_backend("hf", tiny_model, max_batch_size=4, dtype="float32")
    fresh = make_backend("hf", tiny_model, max_batch_size=4, dtype="float32", reuse_rows=False)
    first = reusing.generate(chats(7), params)
    assert reusing.reused_tokens == 0
    follow = [
        c + [{"role": "assistant", "content": f[0].text}, {"role": "user", "content": "Now " * i}]
        for i, (c, f) in enumerate(zip(chats(7), first), start=1)
    ]
    again = reusing.generate(follow, params)
    ids = reusing.encode([reusing.render(c) for c in chats(7)])
    shared = reusing.shared_prefix_length(ids)
    # at least every first prompt's own tokens came from the kept rows, less the layout's slack
    assert reusing.reused_tokens > 0.5 * sum(len(x) - shared for x in ids)
    assert [c[0].text for c in again] == [c[0].text for c in fresh.generate(follow, params)]
    # the kept rows are this call's now: a third, unrelated call reuses nothing of the first
    before = reusing.reused_tokens
    reusing.generate([[{"role": "user", "content": "Unrelated " * 9}]] * 2, params)
    assert reusing.reused_tokens == before


def test_options_scored_after_written_reasoning_reuse_its_keys_and_values(tiny_model):
    """Chain-of-thought labels: the judge writes, then its options are scored after what it
    wrote; the scoring prompts read the writing call's rows and give the same log-probs."""
    reusing = make_backend("hf", tiny_model, max_batch_size=4, dtype="float32")
    fresh = make_backend("hf", tiny_model, max_batch_size=4, dtype="float32", reuse_rows=False)
    texts = [reusing.render(c) + "Let's think step by step:" for c in chats(6)]
    wrote = reusing.generate(texts, Sampling(max_new_tokens=8))
    prompts = [f"{t} {w[0].text} The answer is (" for t, w in zip(texts, wrote)]
    got = reusing.choice_logprobs(prompts, ["A", "B"])
    assert reusing.reused_tokens > 0
    want = fresh.choice_logprobs(prompts, ["A", "B"])
    assert max(abs(x - y) for r, s in zip(got, want) for x, y in zip(r, s)) < 1e-4
    # multi-token options are scored by teacher forcing, the options' tokens always computed
    before = reusing.reused_tokens
    got = reusing.choice_logprobs(prompts, [" first one", " second one"])
    assert reusing.reused_tokens > before
    want = fresh.choice_logprobs(prompts, [" first one", " second one"])
    assert max(abs(x - y) for r, s in zip(got, want) for x, y in zip(r, s)) < 1e-4


def test_batched_equals_one_at_a_time(backend):
    params = Sampling(max_new_tokens=10)
    batched = backend.generate(chats(5), params)
    single = [backend.generate([c], params)[0] for c in chats(5)]
    assert [c[0].text for c in batched] == [c[0].text for c in single]


def test_n_samples_and_progress(backend):
    seen = []
    outs = backend.generate(
        chats(4),
        Sampling(max_new_tokens=6, temperature=1.0, n=3, seed=1),
        progress=lambda calls, toks: seen.append((calls, toks)),
    )
    assert [len(o) for o in outs] == [3, 3, 3, 3]
    assert sum(c for c, _ in seen) == 4
    assert sum(t for _, t in seen) == sum(c.tokens for o in outs for c in o)
    assert all(c.finish_reason in ("stop", "length") and c.tokens <= 6 for o in outs for c in o)
    texts = {c.text for o in outs for c in o}
    assert len(texts) > 4  # sampling gives different samples


def test_choice_logprobs_are_log_probabilities(backend):
    rows = backend.choice_logprobs([c for c in chats(3)], ["A", "B"])
    assert len(rows) == 3
    for a, b in rows:
        assert a < 0 and b < 0


def test_choice_logprobs_match_a_plain_forward_pass(backend):
    """Shared-prefix scoring and multi-token choices agree with an unbatched forward pass."""
    prompts = [backend.render(c) + "The answer is: (" for c in chats(4)]
    for choices in (["A", "B"], ["A", "B", " maybe both"]):  # one-token fast path, then general
        check(backend, prompts, choices, backend.choice_logprobs(prompts, choices))


def check(backend, prompts, choices, got):
    import torch

    for prompt, row in zip(prompts, got):
        base = backend.encode([prompt])[0]
        for choice, value in zip(choices, row):
            target = backend.encode([choice])[0]
            ids = torch.tensor([base + target])
            with torch.inference_mode():
                logp = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), -1)
            want = sum(logp[len(base) - 1 + k, t].item() for k, t in enumerate(target))
            assert value == pytest.approx(want, abs=1e-3)


def test_bf16_matches_fp32_greedily_within_tolerance(tiny_model):
    """Teacher-force fp32's greedy text through both: bf16 picks the same next token wherever
    fp32's top two are not a near-tie, and its probabilities differ by bf16 rounding only.

    The tiny model's logits span ~18 and bf16 moves them by up to ~1, so log-probs of unlikely
    tokens move too; probabilities (what labels are made of) move by well under 0.02.
    """
    import torch

    fp32 = make_backend("hf", tiny_model, dtype="float32", max_batch_size=4)
    bf16 = make_backend("hf", tiny_model, dtype="bfloat16", max_batch_size=4)
    assert bf16.model.dtype == torch.bfloat16 and fp32.model.dtype == torch.float32
    outs = fp32.generate(chats(6), Sampling(max_new_tokens=16))
    steps = ties = 0
    for chat, out in zip(chats(6), outs):
        ids = torch.tensor([fp32.encode([fp32.render(chat) + out[0].text])[0]])
        with torch.inference_mode():
            l32 = torch.log_softmax(fp32.model(input_ids=ids).logits[0, -17:].float(), -1)
            l16 = torch.log_softmax(bf16.model(input_ids=ids).logits[0, -17:].float(), -1)
        top2 = l32.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        differ = l32.argmax(-1) != l16.argmax(-1)
        steps += len(margin)
        ties += int(differ.sum())
        assert bool((margin[differ] < 0.25).all()), margin[differ]  # only near-ties flip
        picked = l32.argmax(-1, keepdim=True)
        gap = (l32.gather(-1, picked).exp() - l16.gather(-1, picked).exp()).abs().max()
        assert float(gap) < 0.02, float(gap)
    assert ties <= steps // 4  # and those are rare
    # option probabilities, normalised over the options as labels are: P(A) within 0.02
    prompts = [fp32.render(c) for c in chats(6)]
    p32 = [
        math.exp(a) / (math.exp(a) + math.exp(b)) for a, b in fp32.choice_logprobs(prompts, "AB")
    ]
    p16 = [
        math.exp(a) / (math.exp(a) + math.exp(b)) for a, b in bf16.choice_logprobs(prompts, "AB")
    ]
    assert max(abs(x - y) for x, y in zip(p32, p16)) < 0.02, (p32, p16)


def test_dtype_auto_and_bad_dtype(tiny_model):
    from cai.backends.hf import cpu_has_bf16
    from cai.errors import InputError

    auto = make_backend("hf", tiny_model)
    assert auto.dtype == ("bfloat16" if cpu_has_bf16() else "float32")
    with pytest.raises(InputError, match="unknown dtype 'float8'"):
        make_backend("hf", tiny_model, dtype="float8")


def test_memory_budget_cuts_batches_and_keeps_results(backend):
    from cai.backends.hf import bytes_per_token, memory_budget_of

    cfg = backend.model.config
    kv = (
        2
        * cfg.num_hidden_layers
        * cfg.num_key_value_heads
        * (cfg.hidden_size // cfg.num_attention_heads)
        * 4
    )
    assert bytes_per_token(cfg, 4) == kv + (6 * cfg.hidden_size + 3 * cfg.intermediate_size) * 4
    assert memory_budget_of(None) == 4 << 30 and memory_budget_of(8 << 30) == 4 << 30
    assert memory_budget_of(1 << 20) == 256 << 20  # a floor, never a zero budget
    # the prefix is copied into every row, so it counts once per row
    assert backend.batch_bytes(2, 10, 100) == 2 * backend.batch_bytes(1, 10, 100)
    assert backend.batch_bytes(1, 10, 100) > backend.batch_bytes(1, 10, 0)
    params = Sampling(max_new_tokens=8)
    wide = backend.generate(chats(6), params)
    lengths = [40, 39, 38, 20, 19, 18]
    assert [len(b) for b in backend.batches(lengths, 8)] == [3, 3]  # max_batch_size=3
    saved = backend.memory_budget
    try:
        for budget, copies in ((backend.batch_bytes(1, 48), 1), (backend.batch_bytes(2, 48), 2)):
            backend.memory_budget = budget  # room for one row (or one prompt) of the widest
            batches = backend.batches(lengths, 8, copies=copies)
            assert [len(b) for b in batches[:3]] == [1, 1, 1]
            assert sorted(i for b in batches for i in b) == list(range(6))
            for b in batches:
                assert backend.batch_bytes(len(b) * copies, lengths[b[0]] + 8) <= budget
        narrow = backend.generate(chats(6), params)
    finally:
        backend.memory_budget = saved
    assert [c[0].text for c in narrow] == [c[0].text for c in wide]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_cai_cpu_attention_matches_sdpa(dtype, tol):
    """Decode (one query) and masked prefill, grouped heads, left padding: as transformers' sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cai.backends.hf.attention import decode_attention
    from cai.backends.hf.kvcache import GrowingLayer

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    module = torch.nn.Module().eval()
    module.num_key_value_groups, module.is_causal = 3, True
    b, kv, heads, d, length = 4, 2, 6, 16, 40
    buf = torch.randn(2, b, kv, length + 8, d, dtype=dt)  # a view of a larger buffer
    key, value = buf[0, :, :, :length], buf[1, :, :, :length]
    grown = GrowingLayer(length + 8, cai_attention=True)  # a decoding step reads its whole buffer
    cached = grown.update(key, value)
    assert cached[0].key_buffer.shape[-2] == length + 8
    pads = [0, 3, 7, 12]
    keep = torch.ones(b, length, dtype=torch.bool)
    for row, p in enumerate(pads):
        keep[row, :p] = False
    for q in (1, 9):
        query = torch.randn(b, q, heads, d, dtype=dt).transpose(1, 2)
        causal = torch.ones(q, length, dtype=torch.bool).tril(length - q)
        mask = (causal[None] & keep[:, None, :])[:, None]  # [b, 1, q, L]
        ref, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=d**-0.5)
        for k, v in ((key, value), cached):
            ours, _ = decode_attention(module, query, k, v, mask, scaling=d**-0.5)
            assert ours.shape == ref.shape == (b, q, heads, d)
            assert (ours.float() - ref.float()).abs().max().item() < tol


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_shared_prefix_attention_matches_sdpa_over_the_whole_sequence(dtype, tol):
    """A prefix held once plus each row's own tokens (left padding, decode and prefill, with and
    without a mask): as sdpa over every row's own copy of prefix and tokens."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from cai.backends.hf.attention import decode_attention
    from cai.backends.hf.kvcache import make_cache

    torch.manual_seed(1)
    dt = getattr(torch, dtype)
    module = torch.nn.Module().eval()
    module.num_key_value_groups, module.is_causal = 3, True
    b, kv, heads, d, plen, own = 4, 2, 6, 16, 24, 12
    pk, pv = torch.randn(2, 1, kv, plen, d, dtype=dt)
    pads = [0, 2, 5, 11]
    keep = torch.ones(b, plen + own, dtype=torch.bool)
    for row, p in enumerate(pads):
        keep[row, plen : plen + p] = False
    for q, padded in ((own, True), (1, True), (own, False), (1, False)):
        cache = make_cache_layer(make_cache, pk, pv, b, own + 5)  # room beyond the tokens
        k_own, v_own = torch.randn(2, b, kv, own, d, dtype=dt)
        if q == 1:
            cache.update(k_own[:, :, :-1], v_own[:, :, :-1])
        cached, value = cache.update(k_own[:, :, own - q :], v_own[:, :, own - q :])
        assert torch.equal(cached.prefix[0], pk) and cache.get_seq_length() == plen + own
        key = cached.keys
        query = torch.randn(b, q, heads, d, dtype=dt).transpose(1, 2)
        total = plen + own
        causal = torch.ones(q, total, dtype=torch.bool).tril(total - q)
        mask = (causal[None] & keep[:, None, :])[:, None] if padded else None
        ours, _ = decode_attention(module, query, cached, value, mask, scaling=d**-0.5)
        whole_k = torch.cat([pk.expand(b, -1, -1, -1), key], dim=-2)
        whole_v = torch.cat([pv.expand(b, -1, -1, -1), value], dim=-2)
        ref_mask = mask if padded else causal[None, None].expand(b, 1, q, total)
        ref, _ = sdpa_attention_forward(module, query, whole_k, whole_v, ref_mask, scaling=d**-0.5)
        assert ours.shape == ref.shape == (b, q, heads, d)
        assert torch.isfinite(ours).all()
        assert (ours.float() - ref.float()).abs().max().item() < tol


def make_cache_layer(make_cache, pk, pv, batch, capacity):
    """One layer of a shared-prefix cache over ``pk``/``pv``."""
    from transformers import LlamaConfig
    from transformers.cache_utils import DynamicCache

    config = LlamaConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    prefix = DynamicCache(config=config)
    prefix.update(pk, pv, 0)
    cache = make_cache(config, batch, capacity, prefix, share=True)
    return cache.layers[0]


def test_decode_attention_on_and_off_give_the_same_text(tiny_model):
    on = make_backend("hf", tiny_model, dtype="float32", max_batch_size=4)
    off = make_backend("hf", tiny_model, dtype="float32", max_batch_size=4, decode_attention=False)
    assert on.model.config._attn_implementation == "cai_cpu"
    assert off.model.config._attn_implementation == "sdpa"
    params = Sampling(max_new_tokens=12)
    short = [[{"role": "user", "content": "hi " * (i + 1)}] for i in range(5)]  # padding, no prefix
    for batch in (chats(6), short):
        assert [c[0].text for c in on.generate(batch, params)] == [
            c[0].text for c in off.generate(batch, params)
        ]


def packs_bit_for_bit(torch, linears) -> bool:
    """Whether oneDNN's packed product equals the plain one on every layer, for the rows the
    engine probes with (3 random rows per layer, from a generator seeded 0, in layer order)."""
    ops, rng = torch.ops.mkldnn, torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for m in linears:
            x = torch.randn(3, m.in_features, generator=rng).to(m.weight.dtype)
            packed = ops._reorder_linear_weight(m.weight)
            if not torch.equal(
                ops._linear_pointwise(x, packed, m.bias, "none", [], ""),
                torch.nn.functional.linear(x, m.weight, m.bias),
            ):
                return False
    return True


def test_packed_linear_weights_change_no_output(tiny_model):
    """bf16 linear layers read weights packed once for oneDNN: the same logits bit for bit and
    the same text as the plain layers; unpacking gives the plain forward back."""
    import torch

    from cai.backends.hf import pack_linears, unpack_linears
    from cai.backends.hf.cpu import PackedLinear

    backend = make_backend("hf", tiny_model, dtype="bfloat16", max_batch_size=4)
    model = backend.model
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    if not torch.backends.mkldnn.is_available():
        assert backend.packed_linears == 0
        return
    if not packs_bit_for_bit(torch, linears):
        # on this CPU oneDNN's packed product rounds some layer differently (seen on an Intel
        # Xeon without AVX512-BF16, at two threads): the engine keeps every layer plain
        assert backend.packed_linears == 0
        assert not any("forward" in m.__dict__ for m in linears)
        return
    assert backend.packed_linears == len(linears) > 0
    assert all(isinstance(m.forward, PackedLinear) for m in linears)
    ids = torch.tensor([backend.encode([backend.render(chats(1)[0])])[0]])
    params = Sampling(max_new_tokens=12)
    with torch.inference_mode():
        packed_logits = model(input_ids=ids).logits
    packed_text = [c[0].text for c in backend.generate(chats(5), params)]
    unpack_linears(model)
    assert not any("forward" in m.__dict__ for m in linears)
    with torch.inference_mode():
        plain_logits = model(input_ids=ids).logits
    backend.forget()
    assert [c[0].text for c in backend.generate(chats(5), params)] == packed_text
    assert torch.equal(packed_logits, plain_logits)
    assert pack_linears(model) == len(linears)
    fp32 = make_backend("hf", tiny_model, dtype="float32", max_batch_size=4)
    assert fp32.packed_linears == 0  # float32 keeps torch's own products


def test_prefill_in_groups_of_similar_length_gives_the_same_text(tiny_model):
    """Rows of a batch prefilled in groups, each as wide as its own widest row (then decoded
    together), give the texts of one rectangle for the whole batch (fp32): with a shared
    prefix, without one, and for prompts that extend the last call's kept rows."""
    from cai.backends.hf.layout import prefill_groups

    params = Sampling(max_new_tokens=10)
    grouped = make_backend("hf", tiny_model, max_batch_size=16, dtype="float32")
    grouped.group_rows, grouped.group_overhead = 2, 0
    whole = make_backend("hf", tiny_model, max_batch_size=16, dtype="float32", group_prefill=False)
    short = [[{"role": "user", "content": "hi " * (1 + 3 * i)}] for i in range(6)]  # no prefix
    calls = []
    for batch in (chats(10), short):
        ids = grouped.encode([grouped.render(c) for c in batch])
        shared = grouped.shared_prefix_length(ids)
        needs = [len(x) - shared for x in ids]
        assert len(prefill_groups(needs, grouped.group_rows, grouped.group_overhead)) > 1
        calls.append(shared)
        got = grouped.generate(batch, params)
        assert [c[0].text for c in got] == [c[0].text for c in whole.generate(batch, params)]
    assert calls[0] >= 32 and calls[1] == 0
    first = grouped.generate(chats(10), params)
    whole.generate(chats(10), params)
    follow = [
        c + [{"role": "assistant", "content": f[0].text}, {"role": "user", "content": "Now " * i}]
        for i, (c, f) in enumerate(zip(chats(10), first), start=1)
    ]
    before = grouped.reused_tokens
    got = grouped.generate(follow, params)
    assert grouped.reused_tokens > before
    assert [c[0].text for c in got] == [c[0].text for c in whole.generate(follow, params)]


def test_a_prompt_sharing_only_its_start_with_a_kept_row_reuses_that_start(tiny_model):
    """The next round's critique prompt shares its question, not the whole prompt, with the
    last revision row: the common start is read from the kept row, the rest computed; fp32
    text as computing every token."""
    params = Sampling(max_new_tokens=6)
    reusing = make_backend("hf", tiny_model, max_batch_size=8, dtype="float32")
    fresh = make_backend("hf", tiny_model, max_batch_size=8, dtype="float32", reuse_rows=False)
    question = [f"Row {i} asks a question of some length, number {i}." for i in range(6)]
    first = [FEW_SHOT + [{"role": "user", "content": q + " First answer."}] for q in question]
    then = [FEW_SHOT + [{"role": "user", "content": q + " Then another."}] for q in question]
    reusing.generate(first, params)
    ids = reusing.encode([reusing.render(c) for c in then])
    shared = reusing.shared_prefix_length(ids)
    found = reusing.reuse.find(ids, shared)
    assert all(f is not None and f.tokens >= 8 for f in found)  # the question's tokens at least
    assert all(f.tokens < len(x) - shared - 3 for f, x in zip(found, ids))  # not the new words
    got = reusing.generate(then, params)
    assert reusing.reused_tokens >= sum(f.tokens for f in found) - 8 * len(found)
    assert [c[0].text for c in got] == [c[0].text for c in fresh.generate(then, params)]
