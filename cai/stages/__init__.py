"""The stages. Each turns inputs into records in a run directory and resumes what a killed run
left; each has a runner (``run_critiques``, ``run_preferences``, ``run_compare``,
``run_labeler``) that takes its config from :mod:`cai.config` and owns the directory's lock,
manifest and interruption. A stage reports progress through a :class:`Reporter` and never prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ..backends import Sampling


class Reporter(Protocol):
    """Progress of one kind of work: ``start`` with the total, ``advance`` as calls finish."""

    def start(self, total: int) -> None: ...
    def advance(self, calls: int, tokens: int = 0) -> None: ...
    def stop(self, failed: bool = False) -> None: ...


Progress = Callable[[str], Reporter]  # what is being counted -> its reporter


class Silent:
    """A reporter that reports nothing: what a runner uses when its caller gives none."""

    def start(self, total: int) -> None: ...
    def advance(self, calls: int, tokens: int = 0) -> None: ...
    def stop(self, failed: bool = False) -> None: ...


def silent(what: str) -> Reporter:
    return Silent()


@contextmanager
def reporting(progress: Progress, what: str) -> Iterator[Reporter]:
    """A reporter for the block, stopped at its end (``failed`` when the block raised, so that
    a failed run's error is not buried under its progress)."""
    bar = progress(what)
    try:
        yield bar
    except BaseException:
        bar.stop(failed=True)
        raise
    bar.stop()


def sampling_of(cfg: Any) -> Sampling:
    """How a stage's config says to sample (a config without ``repetition_penalty``: none)."""
    return Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        repetition_penalty=getattr(cfg, "repetition_penalty", 1.0),
    )
