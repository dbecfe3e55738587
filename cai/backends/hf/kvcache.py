"""A KV cache for CPU inference that writes in place, and what it hands our attention.

Handles: :class:`GrowingLayer`, one layer's keys and values in a buffer with spare room (doubling
when full), so that a decoding step writes only the new token's keys and values where
transformers' ``DynamicLayer`` concatenates, copying the whole cache each step;
:class:`SharedPrefixLayer`, which holds a prefix common to every row (the few-shot block) once,
batch 1; :class:`CachedKV`, what these layers hand ``cai_cpu`` attention (``attention.py``);
:func:`make_cache`, a cache of such layers for a batch. Does not handle: models with
sliding-window or other special layers (:func:`make_cache` returns ``None`` and the caller uses
transformers' own cache), or a shared prefix read by any attention but ``cai_cpu``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


@dataclass(frozen=True)
class CachedKV:
    """One layer's cache as ``cai_cpu`` attention reads it.

    ``keys``/``values`` are the filled part, [b, kv_heads, L, d]. ``key_buffer``/``value_buffer``
    are the whole buffers, [b, kv_heads, capacity, d], zero beyond L: a decoding step multiplies
    them (the mask hides the room) because oneDNN's products want contiguous matrices. ``prefix``
    is the keys and values [1, kv_heads, P, d] that precede every row's own, or ``None``.
    """

    keys: torch.Tensor
    values: torch.Tensor
    key_buffer: torch.Tensor
    value_buffer: torch.Tensor
    prefix: tuple[torch.Tensor, torch.Tensor] | None = None


class GrowingLayer(DynamicLayer):
    """One layer's keys and values for a batch, in a buffer written in place.

    ``keys``/``values`` (what transformers reads) are views of the filled part. ``update``
    returns them, or, with ``cai_attention``, a :class:`CachedKV` and the values for ``cai_cpu``
    attention to read.
    """

    def __init__(self, capacity: int, cai_attention: bool = False):
        super().__init__()
        self.capacity = max(1, capacity)
        self.cai_attention = cai_attention
        self._length = 0

    @property
    def length(self) -> int:
        """Positions filled, the rows' own only."""
        return self._length

    @property
    def nbytes(self) -> int:
        """Bytes of this layer's buffers (a shared prefix not counted: it is held elsewhere)."""
        return self._k.nbytes + self._v.nbytes if self.is_initialized else 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        # zeroed: a decoding step reads the whole buffer; room not yet filled must hold finite
        # values, which its mask then hides
        self._k = key_states.new_zeros(self._shape(key_states, self.capacity))
        self._v = value_states.new_zeros(self._shape(value_states, self.capacity))
        self.is_initialized = True
        self._views()

    @staticmethod
    def _shape(t: torch.Tensor, length: int) -> tuple[int, ...]:
        return (*t.shape[:-2], length, t.shape[-1])

    def _views(self) -> None:
        self.keys = self._k[..., : self._length, :]
        self.values = self._v[..., : self._length, :]

    def read(self) -> CachedKV:
        """The filled part and the whole buffers, as ``cai_cpu`` attention reads them."""
        return CachedKV(self.keys, self.values, self._k, self._v)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._length + n > self._k.shape[-2]:
            cap = max(2 * self._k.shape[-2], self._length + n)
            for name in ("_k", "_v"):
                old = getattr(self, name)
                new = old.new_zeros(self._shape(old, cap))
                new[..., : self._length, :] = old[..., : self._length, :]
                setattr(self, name, new)
        self._k[..., self._length : self._length + n, :] = key_states
        self._v[..., self._length : self._length + n, :] = value_states
        self._length += n
        self._views()
        return (self.read(), self.values) if self.cai_attention else (self.keys, self.values)

    def write(
        self, rows: torch.Tensor, start: int, keys: torch.Tensor, values: torch.Tensor, batch: int
    ) -> None:
        """Put ``keys``/``values`` [len(rows), kv_heads, n, d] at own positions ``start`` to
        ``start + n`` of the batch rows ``rows``, the buffers made for ``batch`` rows on first
        use; the filled length stays as it is until :meth:`set_length`. A prefill computed in
        groups of rows writes each group where the whole batch's tokens would be."""
        if not self.is_initialized:
            like = keys.new_empty(batch, *keys.shape[1:])
            self.lazy_initialization(like, like)
        n = keys.shape[-2]
        self._k[rows, :, start : start + n] = keys
        self._v[rows, :, start : start + n] = values

    def set_length(self, length: int) -> None:
        """Mark the first ``length`` own positions filled (after :meth:`write`)."""
        self._length = length
        self._views()

    def gather(self, row: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [kv_heads, len(positions), d] of batch row ``row`` at own positions
        ``positions``."""
        return self._k[row].index_select(-2, positions), self._v[row].index_select(-2, positions)

    def get_seq_length(self) -> int:
        return self._length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self._length = max(0, self._length + tokens_to_remove)
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices, ...], self._v[indices, ...]
            self._views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


class SharedPrefixLayer(GrowingLayer):
    """The rows' own keys and values after a prefix held once for the whole batch.

    ``keys``/``values`` are the rows' own part; :meth:`read` (what ``update`` returns) adds the
    prefix (keys, values, each [1, kv_heads, P, d]). The sequence length counts the prefix, so
    positions and masks are those of the full sequence. Only ``cai_cpu`` attention reads it.
    """

    def __init__(self, capacity: int, keys: torch.Tensor, values: torch.Tensor):
        super().__init__(capacity, cai_attention=True)
        self.prefix = (keys, values)
        self.prefix_length = keys.shape[-2]

    def read(self) -> CachedKV:
        return CachedKV(self.keys, self.values, self._k, self._v, self.prefix)

    def get_seq_length(self) -> int:
        return self.prefix_length + self.length


def make_cache(
    config,
    batch: int,
    capacity: int,
    prefix: DynamicCache | None = None,
    share: bool = False,
    cai_attention: bool = False,
):
    """A cache of :class:`GrowingLayer` for ``batch`` rows; ``None`` if the model needs others.

    ``prefix`` (batch 1) is copied into every row, or with ``share`` held once
    (:class:`SharedPrefixLayer`, read by ``cai_cpu`` attention only). ``cai_attention``: the
    model's attention is ``cai_cpu``, so the layers hand it :class:`CachedKV`.
    """
    probe = DynamicCache(config=config)
    if not probe.layers or any(type(layer) is not DynamicLayer for layer in probe.layers):
        return None
    cache = DynamicCache(config=config)
    if share and prefix is not None:
        cache.layers = [SharedPrefixLayer(capacity, src.keys, src.values) for src in prefix.layers]
        return cache
    cache.layers = [GrowingLayer(capacity, cai_attention) for _ in probe.layers]
    if prefix is not None:
        for layer, src in zip(cache.layers, prefix.layers):
            layer.update(
                src.keys.expand(batch, *src.keys.shape[1:]),
                src.values.expand(batch, *src.values.shape[1:]),
            )
    return cache
