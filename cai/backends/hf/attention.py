"""Attention for CPU decoding and prefill, registered with transformers as ``cai_cpu``.

Handles: a decoding step (one query per row) as one batched product per part for the scores,
one softmax over both parts' scores together and one product per part with the values, reading
our cache's whole buffers so that oneDNN multiplies contiguous matrices; a prefill with a padding
mask through torch's kernel with ``enable_gqa`` (transformers would first copy the keys and
values once per query head); a shared prefix (``kvcache.SharedPrefixLayer``: the few-shot block,
the same for every row) held once and attended in two parts, as in cascade or Hydragen
attention: every row's queries against the prefix as one matrix product, the rows' own tokens
as above, the two parts' softmaxes merged by their log-sum-exps in a prefill and sharing one
softmax in a decoding step. Grouped-query attention is computed without copying the cache per
query head: the query heads that share a key/value head attend to its keys at once.

Our cache hands :func:`decode_attention` a :class:`kvcache.CachedKV` as ``key``; any other
cache, plain tensors. The mask is built exactly as for ``sdpa``. Does not handle: attention
weights as output or dropout (without a shared prefix such calls go to transformers' own ``sdpa``
function, as does a prefill without padding).
"""

from __future__ import annotations

import torch

from .kvcache import CachedKV

NAME = "cai_cpu"


def decode_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """``query`` [b, heads, q, d]; ``key``/``value`` [b, kv_heads, L, d], or from our cache a
    :class:`CachedKV` as ``key`` (whose own values ``value`` is); returns [b, q, heads, d] (as
    transformers' attention functions do) and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cached = key if isinstance(key, CachedKV) else None
    prefix = buffers = None
    if cached is not None:
        key, value, prefix = cached.keys, cached.values, cached.prefix
        buffers = (cached.key_buffer, cached.value_buffer)
    b, heads, q, d = query.shape
    kv = key.shape[1]
    if prefix is None and (kwargs.get("output_attentions") or (dropout and module.training)):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if q == 1:  # a decoding step, with or without a shared prefix
        plen = 0 if prefix is None else prefix[0].shape[-2]
        keep = None
        if attention_mask is not None:
            keep = _seen(attention_mask)[..., -1:, plen : plen + key.shape[-2]]
        scale = scaling if scaling is not None else d**-0.5
        out = _one_query(query, key, value, keep, scale, prefix, buffers)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if prefix is not None:
        return shared_prefix_attention(query, key, value, prefix, attention_mask, scaling)
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


def _seen(mask):
    """A mask as bool (True: the key is seen), from bool or additive (-inf: hidden)."""
    return mask if mask.dtype == torch.bool else mask > float("-inf")


def _additive(mask, dtype):
    """A bool mask as the flash kernel takes it: 0 where seen, -inf where hidden."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _one_query(query, key, value, keep, scale: float, prefix=None, buffers=None):
    """A decoding step: ``query`` [b, heads, 1, d] over a shared ``prefix`` (keys, values
    [1, kv, P, d], or None) and each row's own ``key``/``value`` [b, kv, L, d], ``keep`` bool
    [b, 1, 1, L] or None (all own keys seen); returns [b, heads, 1, d] in float32.

    The scores of both parts go into one [kv, b * group, P + room] matrix (a row's query heads
    that share a key/value head are that head's queries; the prefix part is one product for
    all rows), one softmax runs over it (in float32 inside, weights rounded to the cache's dtype
    as transformers' eager attention does), and each part's weights multiply its values.
    oneDNN's bf16 product is slow on a view of part of a larger buffer, so with ``buffers``
    (our cache's whole key and value buffers, zero beyond ``L``) the products run over them and
    the mask hides the room not yet filled; other keys are copied contiguous first.
    """
    b, heads, _, d = query.shape
    kv, length = key.shape[1], key.shape[-2]
    group = heads // kv
    key, value = (key.contiguous(), value.contiguous()) if buffers is None else buffers
    room = key.shape[-2]
    seen = keep
    if room != length:
        seen = torch.zeros(b if keep is not None else 1, 1, 1, room, dtype=torch.bool)
        seen[..., :length] = True if keep is None else keep
    q = (query * scale).reshape(b, kv, group, d)
    own = torch.matmul(q, key.transpose(-1, -2))  # [b, kv, group, room]
    if seen is not None:
        own.masked_fill_(~seen, float("-inf"))
    if prefix is None:
        weights = torch.softmax(own, dim=-1)
        return torch.matmul(weights, value).float().reshape(b, heads, 1, d)
    pk, pv = prefix[0][0], prefix[1][0]  # [kv, P, d]
    plen = pk.shape[-2]
    scores = torch.empty(kv, b * group, plen + room, dtype=own.dtype)
    stacked = q.transpose(0, 1).reshape(kv, b * group, d)
    torch.matmul(stacked, pk.transpose(-1, -2), out=scores[..., :plen])
    scores[..., plen:].view(kv, b, group, room).copy_(own.transpose(0, 1))
    weights = torch.softmax(scores, dim=-1)
    mine = weights[..., plen:].view(kv, b, group, room).transpose(0, 1)
    out = torch.matmul(mine, value).float()  # [b, kv, group, d]
    shared = torch.matmul(weights[..., :plen], pv)  # [kv, b * group, d]
    out += shared.view(kv, b, group, d).transpose(0, 1)
    return out.reshape(b, heads, 1, d)


def _own_part(query, key, value, mask, scale: float):
    """Attention of ``query`` [b, heads, q, d] (a prefill) over the rows' own keys
    [b, kv, S, d] with the mask's own part (bool [b, 1, q, S] or None: causal); returns output
    [b, heads, q, d] and log-sum-exp [b, heads, q] in float32, -inf where a query sees no key."""
    q = query.shape[2]
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
    """A prefill's attention over ``prefix`` (keys, values [1, kv, P, d], visible to every
    query) followed by the rows' own ``key``/``value`` [b, kv, S, d]; ``attention_mask`` spans
    P + S (or is None: no padding, causal). Returns [b, q, heads, d] and no weights. The two
    parts go through torch's flash kernel and are merged by their log-sum-exps."""
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
    # both parts' outputs (the kernel's laid out [batch, q, heads, d]) take these views uncopied
    pre = pre.view(kv, b, group * q, d).transpose(0, 1).reshape(b, heads, q, d)
    pre_lse = pre_lse.view(kv, b, group * q).transpose(0, 1).reshape(b, heads, q)
    # softmax over prefix and own keys = the two parts weighted by their shares of exp(lse);
    # the own part's share is 0 where it is empty (lse -inf)
    share_own = torch.sigmoid(own_lse - pre_lse)
    out = torch.lerp(pre, own, share_own[..., None].to(own.dtype))
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``cai_cpu`` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
