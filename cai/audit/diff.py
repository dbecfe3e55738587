"""Word-level change between two texts: a normalised edit distance and a word diff.

Words are runs of non-space characters (``text.split()``); whitespace and line breaks do not
count as changes. ``change(a, b)`` is the word-level Levenshtein distance (insert, delete or
substitute one word, each costing 1) divided by the longer text's word count: 0.0 means the same
words in the same order, 1.0 means no word kept in place (for example, every word replaced, or
one text empty and the other not). Two empty texts have change 0.0.

>>> change("the cat sat", "the dog sat")
0.3333333333333333
>>> render_plain(word_diff("the cat sat", "the dog sat down"))
'the [-cat-]{+dog+} sat {+down+}'

The distance uses a bit-parallel algorithm (one pass over the second text, each step a few
operations on Python integers as wide as the first text), so long answers cost little. The diff
itself comes from :mod:`difflib` and shows words as they were, line breaks included; a few
words kept by chance inside a rewrite are shown as part of the rewrite.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

Op = Literal["=", "-", "+"]
Segment = tuple[Op, str, str]  # (op, text without its trailing whitespace, trailing whitespace)

_TOKEN = re.compile(r"\S+\s*")


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two sequences of words (unit costs).

    >>> edit_distance("a b c".split(), "a c d".split())
    2
    """
    if not a:
        return len(b)
    if not b:
        return len(a)
    m = len(a)
    mask, top = (1 << m) - 1, 1 << (m - 1)
    where: dict[str, int] = {}
    for i, w in enumerate(a):
        where[w] = where.get(w, 0) | (1 << i)
    pv, mv, score = mask, 0, m  # vertical deltas of the DP column: +1 / -1 bits
    for w in b:
        eq = where.get(w, 0)
        xv = eq | mv
        xh = ((((eq & pv) + pv) & mask) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & mask
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv
    return score


def change(before: str, after: str) -> float:
    """Normalised word edit distance in [0, 1] (see the module docstring)."""
    a, b = before.split(), after.split()
    longest = max(len(a), len(b))
    return edit_distance(a, b) / longest if longest else 0.0


def _split(tokens: list[str]) -> tuple[str, str]:
    """Tokens joined, then cut into (text, trailing whitespace)."""
    text = "".join(tokens)
    body = text.rstrip()
    return body, text[len(body) :]


def _absorb_islands(ops: list[tuple]) -> list[tuple]:
    """Fold a kept run shorter than the changes on both sides of it into one change.

    In a rewrite, words such as "to" or "it" match by chance; a diff cut at each of them is
    hard to read, so ``[-a b c-] it [-d e f-]`` becomes ``[-a b c it d e f-]``.
    """
    out: list[tuple] = []
    for k, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal" and out and k + 1 < len(ops):
            nxt, prev = ops[k + 1], out[-1]
            size = i2 - i1
            if size < max(prev[2] - prev[1], prev[4] - prev[3]) and size < max(
                nxt[2] - nxt[1], nxt[4] - nxt[3]
            ):
                out[-1] = ("replace", prev[1], i2, prev[3], j2)
                continue
        if tag != "equal" and out and out[-1][0] != "equal":
            out[-1] = ("replace", out[-1][1], i2, out[-1][3], j2)
            continue
        out.append((tag, i1, i2, j1, j2))
    return out


def word_diff(before: str, after: str) -> list[Segment]:
    """The changes from ``before`` to ``after`` as kept (=), removed (-) and added (+) runs."""
    ta, tb = _TOKEN.findall(before), _TOKEN.findall(after)
    wa, wb = [t.rstrip() for t in ta], [t.rstrip() for t in tb]
    out: list[Segment] = []
    matcher = difflib.SequenceMatcher(None, wa, wb, autojunk=False)
    for tag, i1, i2, j1, j2 in _absorb_islands(matcher.get_opcodes()):
        if tag == "equal":
            out.append(("=", *_split(tb[j1:j2])))
            continue
        if i2 > i1:
            out.append(("-", *_split(ta[i1:i2])))
        if j2 > j1:
            out.append(("+", *_split(tb[j1:j2])))
    # runs end where the words of one text ran out: keep them apart from what follows
    return [(op, t, tail or " ") for op, t, tail in out[:-1]] + out[-1:]


def render(segments: list[Segment], kept, removed, added) -> list:
    """Map segments through three functions of (text); whitespace between runs is kept as text.

    A removed run followed by an added one (a replacement) shares the added run's whitespace.
    """
    parts = []
    for n, (op, text, tail) in enumerate(segments):
        if op == "=":
            parts.append(kept(text + tail))
            continue
        parts.append((removed if op == "-" else added)(text))
        replaced = op == "-" and n + 1 < len(segments) and segments[n + 1][0] == "+"
        if tail and not replaced:
            parts.append(kept(tail))
    return parts


def render_plain(segments: list[Segment]) -> str:
    """``[-removed-]{+added+}`` markers, the style of ``git diff --word-diff=plain``."""
    return "".join(render(segments, str, lambda t: f"[-{t}-]", lambda t: f"{{+{t}+}}"))
