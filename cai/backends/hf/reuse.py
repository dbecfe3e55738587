"""What the hf engine keeps from one call for the next, so that it need not compute those keys
and values again.

Handles: the KV cache of the last shared prefix (the few-shot block), the finished rows of the
last ``generate`` call with where their keys and values are, and finding for each new prompt the
kept row that begins with the longest run of its tokens (a revision prompt extends its critique
row; the next round's critique shares its question with the last revision row; options scored
after written reasoning extend the writing). Does not handle: deciding what to keep or copying
kept keys and values into a batch's cache (the engine does both), or any cache but ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers.cache_utils import DynamicCache


@dataclass(frozen=True)
class KeptRow:
    """A finished row: its tokens (prompt, then the generated tokens fed back) and where their
    keys and values are: row ``row`` of ``cache``, own token k (after a shared prefix of
    ``prefix`` tokens) at position ``positions[k]`` of the row's own part."""

    tokens: tuple[int, ...]
    prefix: int
    cache: DynamicCache
    row: int
    positions: torch.Tensor

    def read(self, layer: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [kv_heads, count, d] of own tokens ``start`` to ``start + count`` in
        layer ``layer``."""
        pos = self.positions[start : start + count]
        return self.cache.layers[layer].gather(self.row, pos)


class Match(NamedTuple):
    """A kept row a prompt begins like, and how many of the prompt's own tokens (after the
    batch's shared prefix) it covers."""

    kept: KeptRow
    tokens: int


@dataclass
class ReuseCache:
    """The keys and values an :class:`~cai.backends.hf.HFBackend` keeps between calls.

    ``prefix_tokens``/``prefix_kv``: the last shared prefix and its KV cache (batch 1), reused by
    every later call whose batch shares that prefix, replaced when a batch shares another.
    ``rows``: the rows of the last ``generate`` call (:class:`KeptRow`), read by later calls
    (``generate`` or ``choice_logprobs``) whose prompts begin like them, replaced at the start
    of each ``generate`` call. :meth:`clear` (``HFBackend.forget``) drops both.
    """

    prefix_tokens: tuple[int, ...] = ()
    prefix_kv: DynamicCache | None = None
    rows: list[KeptRow] = field(default_factory=list)

    def clear(self) -> None:
        self.prefix_tokens, self.prefix_kv, self.rows = (), None, []

    def prefix_for(self, tokens: Sequence[int]) -> DynamicCache | None:
        """The kept KV cache of the prefix ``tokens``, if it is the one kept."""
        return self.prefix_kv if self.prefix_tokens == tuple(tokens) else None

    def hold_prefix(self, tokens: Sequence[int], kv: DynamicCache) -> None:
        self.prefix_tokens, self.prefix_kv = tuple(tokens), kv

    def has_room(self, cache: DynamicCache, limit: int) -> bool:
        """Whether ``cache`` and the caches of the kept rows fit in ``limit`` bytes."""
        held = {id(k.cache): k.cache for k in self.rows}
        return _nbytes(cache) + sum(_nbytes(c) for c in held.values()) <= limit

    def find(
        self, ids: list[list[int]], shared: int, last: Sequence[int] | None = None
    ) -> list[Match | None]:
        """Per row of ``ids``, the kept row that begins with the longest run of its tokens and
        how many of its own tokens after ``shared`` that run covers, leaving the row's ``last``
        tokens (1 by default) to compute."""
        found: list[Match | None] = [None] * len(ids)
        if not self.rows or not shared:
            return found
        # kept rows by their tokens up to the first past our shared prefix, whose own part does
        # not start inside it
        index: dict[tuple[int, ...], list[KeptRow]] = {}
        for kept in self.rows:
            if kept.prefix <= shared < len(kept.tokens):
                index.setdefault(kept.tokens[: shared + 1], []).append(kept)
        for i, x in enumerate(ids):
            best, best_end = None, shared
            for kept in index.get(tuple(x[: shared + 1]), ()):
                end, toks = shared + 1, kept.tokens
                while end < len(toks) and end < len(x) and toks[end] == x[end]:
                    end += 1
                if end > best_end:
                    best, best_end = kept, end
            covered = min(best_end, len(x) - (last[i] if last else 1)) - shared
            if best is not None and covered > 0:
                found[i] = Match(best, covered)
        return found


def _nbytes(cache: DynamicCache) -> int:
    return sum(layer.nbytes for layer in cache.layers)
