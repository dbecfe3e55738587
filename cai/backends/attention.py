"""Attention for CPU decoding and prefill, registered with transformers as ``cai_cpu``.

While decoding, each step has one query per row against the whole cache (a 1,200-token few-shot
prompt in every critique). On this project's 2-core CPU, torch's fused CPU kernel
(``scaled_dot_product_attention``) spent 12 ms per layer and step on 16 such rows in bfloat16,
70% of decode time, where two batched matrix products over the cache take about 2 ms (measured
here). So one query per row goes through those two products. A prefill with a padding mask goes
to torch's kernel with ``enable_gqa``: transformers would first copy the keys and values once per
query head (1.4 s of an 8 s prefill of 32 critique rows). Everything else goes to transformers'
own ``sdpa`` function unchanged, and the mask is built exactly as for ``sdpa``.

Grouped-query attention is computed without copying the cache per query head: the query heads
that share a key/value head are stacked and multiplied with that head's keys at once.
"""

from __future__ import annotations

import torch

NAME = "cai_cpu"


def decode_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """``query`` [b, heads, q, d]; ``key``/``value`` [b, kv_heads, L, d]; returns [b, q, heads, d]
    (as transformers' attention functions do) and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q, d = query.shape
    kv = key.shape[1]
    if kwargs.get("output_attentions") or (dropout and module.training):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if q != 1:
        if attention_mask is None or kv == heads:  # causal without a mask: transformers' path
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, scaling=scaling, **kwargs
            )
        # prefill with a mask: transformers repeats keys and values per query head here (a copy
        # of the whole cache per layer); torch's kernel reads the shared heads directly
        out = torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask[:, :, :, : key.shape[-2]],
            scale=scaling,
            enable_gqa=True,
        )
        return out.transpose(1, 2).contiguous(), None
    group = heads // kv  # query heads h uses key/value head h // group
    scale = scaling if scaling is not None else d**-0.5
    qg = query.reshape(b, kv, group, d)
    if query.dtype == torch.bfloat16:
        # keys x queries keeps the cache in its own layout (no copy); fastest in bf16 here
        scores = torch.matmul(key, qg.transpose(-1, -2)).transpose(-1, -2).float()
    else:
        scores = torch.bmm(
            qg.reshape(b * kv, group, d), key.reshape(b * kv, -1, d).transpose(1, 2)
        ).view(b, kv, group, -1)
        scores = scores.float()
    scores = scores * scale
    if attention_mask is not None:
        last = attention_mask[:, :, -1:, : scores.shape[-1]]  # [b, 1, 1, L]
        if last.dtype == torch.bool:
            scores = scores.masked_fill(~last, float("-inf"))
        else:
            scores = scores + last.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [b, kv, group, d]
    return out.reshape(b, heads, 1, d).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``cai_cpu`` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
