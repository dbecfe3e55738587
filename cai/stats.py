"""Win rates, bootstrap intervals and Bradley-Terry (Elo) ratings from pairwise judgements, and
the expected calibration error (:func:`ece`) of a judge's probabilities.

The unit of evidence is the prompt. On one prompt the judge reads a pair under E principles in
both orders; those 2E probabilities are correlated (same answers, same judge), so they are first
reduced to one outcome per prompt, and confidence intervals resample prompts (a percentile
bootstrap), never single judgements.

An outcome is 1 (the first answer wins), 0.5 (tie) or 0 (it loses). A win needs the judge to
prefer the first answer in *both* orders (mean over principles per order) and by more than the
tie margin overall; a preference that flips when the answers swap places is position bias and
counts as a tie. A pair the judge was not asked about (identical or empty answers) is a tie.

Ratings: a Bradley-Terry model fit by maximum likelihood (Newton's method) to the outcomes of
every pair of contestants, a tie scoring half a win to each side. Each pair that met also gets
``prior`` virtual ties, which keeps the fit finite when one side wins every prompt (it shrinks
ratings toward each other a little). Ratings are shown on the Elo scale, anchored at 1000 for the
baseline: a 400-point gap means 10:1 odds.

>>> outcome([{"order": "AB", "p_first": 0.9}, {"order": "BA", "p_first": 0.7}])
1.0
>>> outcome([{"order": "AB", "p_first": 0.9}, {"order": "BA", "p_first": 0.4}])
0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ELO_SCALE = 400 / math.log(10)


def outcome(judgements: Sequence[dict[str, Any]], margin: float = 0.0) -> float:
    """One prompt's outcome for the first answer from its judgements (``order``, ``p_first``)."""
    by_order: dict[str, list[float]] = {}
    for j in judgements:
        by_order.setdefault(j["order"], []).append(j["p_first"])
    if not by_order:
        return 0.5
    means = [sum(v) / len(v) for v in by_order.values()]
    overall = sum(j["p_first"] for j in judgements) / len(judgements)
    if all(m > 0.5 for m in means) and overall > 0.5 + margin:
        return 1.0
    if all(m < 0.5 for m in means) and overall < 0.5 - margin:
        return 0.0
    return 0.5


def bootstrap_ci(
    values: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (None when there are none)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


def summarize(outcomes: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Wins, ties, losses, the win rate (a tie counts half) and its 95% bootstrap interval.

    >>> s = summarize([1.0] * 8 + [0.0] * 2)
    >>> s["wins"], s["losses"], s["win_rate"]
    (8, 2, 0.8)
    """
    n = len(outcomes)
    ci = bootstrap_ci(outcomes, resamples, seed)
    return {
        "n": n,
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
        "win_rate": round(sum(outcomes) / n, 4) if n else None,
        "ci95": [round(v, 4) for v in ci] if ci else None,
    }


def bradley_terry(points: np.ndarray, prior: float = 1.0, anchor: int = 0) -> np.ndarray:
    """Log-strengths from ``points[i, j]`` (what i scored against j; a tie is 0.5 each).

    ``r[anchor]`` is 0. P(i beats j) = 1 / (1 + exp(r[j] - r[i])).

    >>> r = bradley_terry(np.array([[0.0, 8.0], [2.0, 0.0]]), prior=0.0, anchor=1)
    >>> round(float(r[0]), 4) == round(math.log(4), 4)
    True
    """
    w = np.asarray(points, dtype=float)
    games = w + w.T
    w = w + prior / 2 * (games > 0)
    games = w + w.T
    m = len(w)
    free = [i for i in range(m) if i != anchor]
    r = np.zeros(m)
    for _ in range(100):
        p = 1 / (1 + np.exp(r[None, :] - r[:, None]))
        grad = (w - games * p).sum(axis=1)
        curv = games * p * p.T
        hess = np.diag(curv.sum(axis=1)) - curv  # minus the Hessian of the log-likelihood
        sub = hess[np.ix_(free, free)]
        step = np.linalg.lstsq(sub, grad[free], rcond=None)[0]
        r[free] += step
        if np.max(np.abs(step), initial=0.0) < 1e-10:
            break
    return r


def elo(
    outcomes: dict[tuple[int, int], Sequence[float]],
    m: int,
    anchor: int = 0,
    prior: float = 1.0,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[list[float], list[list[float]]]:
    """Elo ratings of ``m`` contestants (``anchor`` = 1000) and 95% bootstrap intervals.

    ``outcomes[(i, j)]`` holds, prompt by prompt, i's outcome against j; every pair must list the
    same prompts in the same order, so a bootstrap draw resamples prompts for all pairs at once.
    """
    pairs = list(outcomes)
    table = np.asarray([outcomes[p] for p in pairs], dtype=float)  # pairs x prompts

    def fit(scores: np.ndarray, games: float) -> np.ndarray:
        points = np.zeros((m, m))
        for (i, j), s in zip(pairs, scores):
            points[i, j] += s
            points[j, i] += games - s
        r = bradley_terry(points, prior, anchor)
        return 1000 + ELO_SCALE * (r - r[anchor])

    n = table.shape[1]
    point = fit(table.sum(axis=1), n)
    rng = np.random.default_rng(seed)
    draws = np.stack(
        [fit(table[:, rng.integers(0, n, n)].sum(axis=1), n) for _ in range(resamples)]
    )
    lo, hi = np.quantile(draws, 0.025, axis=0), np.quantile(draws, 0.975, axis=0)
    return [float(v) for v in point], [[float(a), float(b)] for a, b in zip(lo, hi)]


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: sum over bins of |accuracy - mean confidence|, weighted.

    >>> round(ece([0.9, 0.9, 0.6, 0.6], [True, True, True, False]), 3)
    0.1
    """
    total, n = 0.0, len(confidences)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidences) if lo < c <= hi or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return total
