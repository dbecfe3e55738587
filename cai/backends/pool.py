"""The servers behind the openai engine: least-loaded choice, ejection and probing.

A server that fails (connection error, timeout, 429, 5xx) leaves the rotation for a cool-down
that doubles with each consecutive failure (with jitter, capped at 30 s); when it ends, one request
probes the server, and an answer puts it back. Thread-safe; ``cond`` wakes waiting callers.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Endpoint:
    url: str
    inflight: int = 0
    failures: int = 0  # consecutive
    down_until: float = 0.0  # monotonic time; 0 = in rotation
    probing: bool = False
    ok: int = 0
    failed: int = 0
    last_error: str = ""


class Pool:
    """The servers: least-loaded choice, ejection with growing cool-down, one probe to return.

    >>> p = Pool(["http://a/v1", "http://b/v1"], per_endpoint=1)
    >>> a, _ = p.acquire(); b, _ = p.acquire(); p.acquire()[0] is None
    True
    """

    def __init__(self, urls: Sequence[str], per_endpoint: int, cooldown: float = 1.0):
        self.endpoints = [Endpoint(u.rstrip("/")) for u in urls]
        self.per_endpoint = per_endpoint
        self.cooldown = cooldown
        self.cond = threading.Condition()
        self._turn = 0

    def acquire(self) -> tuple[Endpoint | None, float]:
        """An endpoint to send to, or (None, seconds until one may be free)."""
        now = time.monotonic()
        with self.cond:
            self._turn += 1
            n = len(self.endpoints)
            ready, wait = [], 60.0
            for k in range(n):
                ep = self.endpoints[(self._turn + k) % n]
                if ep.down_until and not ep.probing:
                    if now >= ep.down_until:
                        ep.probing, ep.inflight = True, ep.inflight + 1
                        return ep, 0.0
                    wait = min(wait, ep.down_until - now)
                elif not ep.down_until and ep.inflight < self.per_endpoint:
                    ready.append(ep)
            if not ready:
                return None, max(wait, 0.01)
            ep = min(ready, key=lambda e: e.inflight)
            ep.inflight += 1
            return ep, 0.0

    def release(self, ep: Endpoint, error: str | None, slow_down: float = 1.0) -> None:
        with self.cond:
            ep.inflight -= 1
            if error is None:
                ep.ok += 1
                ep.failures, ep.down_until, ep.probing = 0, 0.0, False
            else:
                ep.failed += 1
                ep.failures += 1
                ep.last_error = error
                ep.probing = False
                # exponential back-off with full jitter, capped at 30 s
                cap = min(30.0, self.cooldown * slow_down * 2 ** (ep.failures - 1))
                ep.down_until = time.monotonic() + random.uniform(cap / 2, cap)
            self.cond.notify_all()

    def stats(self) -> list[dict[str, Any]]:
        with self.cond:
            return [
                {"url": public_url(e.url), "ok": e.ok, "failed": e.failed} for e in self.endpoints
            ]


def public_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    return re.sub(r"//[^/@]*@", "//", url)


def retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500
