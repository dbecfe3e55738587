"""Where each row's tokens sit in a batch of the hf engine, and which rows are prefilled together.

Handles: the layout ``[shared prefix][padding][reused][padding][computed]`` of a batch (the
reused part read from a kept row, right-aligned; the computed part as wide as the widest row's),
its attention mask and position ids, and the cut of a batch's rows into groups of similar need.
Does not handle: the cache itself (``kvcache.py``) or which kept row a prompt extends
(``reuse.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .reuse import Match


class Layout(NamedTuple):
    """A batch's own part after the shared prefix: per row, how many own tokens come from a
    kept row (right-aligned in the first ``held`` positions) and the tokens to compute (in the
    last ``width - held``); ``mask`` covers the prefix and the own part."""

    reused: list[int]
    computed: list[list[int]]
    mask: torch.Tensor
    held: int
    width: int

    @property
    def positions(self) -> torch.Tensor:
        """Each token's position in its row, the padding before it not counted."""
        return (self.mask.cumsum(-1) - 1).clamp(min=0)


def needs(tails: list[list[int]], reuse: Sequence[Match | None] | None) -> list[int]:
    """Per row, how many of its own tokens have no kept keys and values to read."""
    reuse = reuse or [None] * len(tails)
    return [len(t) - (u.tokens if u else 0) for t, u in zip(tails, reuse)]


def plan_layout(
    tails: list[list[int]],
    reuse: Sequence[Match | None] | None,
    shared: int,
    spans: list[int] | None = None,
) -> Layout:
    """How many of each row's own tokens (``tails``) come from a kept row (``reuse``; ``None``
    where nothing may be read) and the rest to compute. A row that reuses computes ``spans[i]``
    tokens (default: as many as the row that needs most), recomputing kept ones if it needs
    fewer, so that rows computed together form a rectangle."""
    reused = [0] * len(tails)
    if reuse and any(reuse):
        if spans is None:
            spans = [max(needs(tails, reuse))] * len(tails)
        reused = [max(0, len(t) - w) if u else 0 for t, w, u in zip(tails, spans, reuse)]
    held = max(reused)
    computed = [t[r:] for t, r in zip(tails, reused)]
    wide = max(len(c) for c in computed)
    mask = torch.tensor(
        [
            [1] * shared + [0] * (held - r) + [1] * r + [0] * (wide - len(c)) + [1] * len(c)
            for r, c in zip(reused, computed)
        ]
    )
    return Layout(reused, computed, mask, held, held + wide)


def prefill_groups(needs: list[int], min_rows: int, overhead: int) -> list[list[int]]:
    """Rows cut into groups of similar need, each computed as its own rectangle (its widest
    row's width): the cuts that minimise the tokens computed, padding included, plus
    ``overhead`` tokens' worth per forward pass, each group ``min_rows`` rows or more (a product
    over fewer rows runs the CPU below its rate).

    >>> prefill_groups([5, 50, 6, 52], min_rows=2, overhead=0)
    [[0, 2], [1, 3]]
    """
    order = sorted(range(len(needs)), key=lambda i: needs[i])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[k]: cost of the k rows of least need
    cut = [0] * (n + 1)
    for k in range(1, n + 1):
        for j in range(k):
            if (k - j < min_rows and not (j == 0 and k == n)) or best[j] == math.inf:
                continue
            cost = best[j] + (k - j) * needs[order[k - 1]] + overhead
            if cost < best[k]:
                best[k], cut[k] = cost, j
    groups, k = [], n
    while k > 0:
        groups.append(order[cut[k] : k])
        k = cut[k]
    return groups[::-1]
