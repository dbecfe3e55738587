"""Attention for CPU decoding and prefill, registered with transformers as ``cai_cpu``.

While decoding, each step has one query per row against the whole cache (a 1,200-token few-shot
prompt in every critique). On this project's 2-core CPU, torch's fused CPU kernel
(``scaled_dot_product_attention``) spent 12 ms per layer and step on 16 such rows in bfloat16,
70% of decode time, as transformers calls it (measured here). Here a row's query heads that share
a key/value head are stacked as that head's queries and torch's flash kernel is called on them
directly: it reads each row's cache once, through its strides, and sums the scores in float32.
A prefill with a padding mask goes to torch's kernel with ``enable_gqa``: transformers would
first copy the keys and values once per query head (1.4 s of an 8 s prefill of 32 critique
rows). Everything else goes to transformers' own ``sdpa`` function unchanged, and the mask is
built exactly as for ``sdpa``.

Grouped-query attention is computed without copying the cache per query head: the query heads
that share a key/value head are stacked and attend to that head's keys at once.

A shared prefix (``kvcache.SharedPrefixLayer``: the few-shot block, the same for every row) is
held once and attended in two parts, as in cascade or Hydragen attention: every row's queries
against the prefix as one matrix product (the prefix read once per layer instead of once per
row), the rows' own tokens as above, and the two softmaxes merged by their log-sum-exps.
Measured here: one decoding step of 64 critique rows read 64 copies of a 1,200-token prefix.
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
    prefix = getattr(key, "cai_prefix", None)
    if prefix is not None:
        return shared_prefix_attention(query, key, value, prefix, attention_mask, scaling)
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
    scale = scaling if scaling is not None else d**-0.5
    keep = None if attention_mask is None else _seen(attention_mask)[..., : key.shape[-2]]
    out, _ = _own_part(query, key, value, keep, scale)
    return out.transpose(1, 2).contiguous(), None


def _seen(mask):
    """A mask as bool (True: the key is seen), from bool or additive (-inf: hidden)."""
    return mask if mask.dtype == torch.bool else mask > float("-inf")


def _additive(mask, dtype):
    """A bool mask as the flash kernel takes it: 0 where seen, -inf where hidden."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _one_query(query, key, value, keep, scale: float):
    """One query per row (a decoding step): ``query`` [b, heads, 1, d] over ``key``/``value``
    [b, kv, L, d] (a view of the growing cache), ``keep`` bool [b, 1, 1, L] or None (all seen);
    returns output [b, heads, 1, d] and log-sum-exp [b, heads, 1] in float32.

    The query heads of one key/value head go to the flash kernel as that head's queries. Two
    batched products (keys x queries, then weights x values) took the same time on a decoding
    step of 64 critique rows (side by side, here) but rounded the scores to bf16, and oneDNN's
    bf16 ``bmm`` copied each row's cache view into a contiguous tensor first; greedy text agreed
    with sdpa's more often this way (7 of 16 critiques against 4).
    """
    b, heads, _, d = query.shape
    kv = key.shape[1]
    group = heads // kv
    add = None
    if keep is not None:
        add = _additive(keep, query.dtype).expand(b, 1, group, keep.shape[-1])
    out, lse = _flash(
        query.reshape(b, kv, group, d), key, value, 0.0, False, attn_mask=add, scale=scale
    )
    return out.reshape(b, heads, 1, d), lse.reshape(b, heads, 1)


def _own_part(query, key, value, mask, scale: float):
    """Attention of ``query`` [b, heads, q, d] over the rows' own keys [b, kv, S, d] with the
    mask's own part (bool [b, 1, q, S] or None: causal); returns output [b, heads, q, d] and
    log-sum-exp [b, heads, q] in float32, -inf where a query sees no key."""
    q = query.shape[2]
    if q == 1:  # decoding
        return _one_query(query, key, value, None if mask is None else mask[:, :, -1:], scale)
    own = key.shape[-2]
    if mask is None:
        if own == q:
            return _flash(query, key, value, 0.0, True, scale=scale)
        # causal, the queries being the last q of the row's own tokens
        mask = torch.ones(q, own, dtype=torch.bool).tril(own - q)[None, None]
    out, lse = _flash(
        query, key, value, 0.0, False, attn_mask=_additive(mask, query.dtype), scale=scale
    )
    seen = mask.any(dim=-1)  # [b, 1, q]; the kernel reports 0, not -inf, for a row that sees none
    return out, lse.masked_fill(~seen, float("-inf"))


def shared_prefix_attention(query, key, value, prefix, attention_mask, scaling=None):
    """Attention over ``prefix`` (keys, values [1, kv, P, d], visible to every query) followed
    by the rows' own ``key``/``value`` [b, kv, S, d]; ``attention_mask`` spans P + S (or is None:
    no padding, causal). Returns [b, q, heads, d] and no weights."""
    pk, pv = prefix
    b, heads, q, d = query.shape
    kv, plen = pk.shape[1], pk.shape[-2]
    group = heads // kv
    scale = scaling if scaling is not None else d**-0.5
    mask = None
    if attention_mask is not None:
        mask = _seen(attention_mask)[:, :, :, plen : plen + key.shape[-2]]
    own, own_lse = _own_part(query, key, value, mask, scale)
    # every row's queries of one key/value head stacked: [1, kv, b * group * q, d] x prefix
    stacked = query.reshape(b, kv, group * q, d).transpose(0, 1).reshape(1, kv, -1, d)
    pre, pre_lse = _flash(stacked, pk, pv, 0.0, False, scale=scale)
    # the kernel's outputs are laid out [batch, q, heads, d]: these views do not copy
    pre = pre.view(kv, b, group * q, d).transpose(0, 1).reshape(b, heads, q, d)
    pre_lse = pre_lse.view(kv, b, group * q).transpose(0, 1).reshape(b, heads, q)
    # softmax over prefix and own keys = the two parts weighted by their shares of exp(lse);
    # the own part's share is 0 where it is empty (lse -inf)
    share_own = torch.sigmoid(own_lse - pre_lse)
    out = torch.lerp(pre, own, share_own[..., None].to(own.dtype))
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``cai_cpu`` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
