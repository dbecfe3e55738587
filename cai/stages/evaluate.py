"""Measuring a feedback model against human labels (``cai eval labeler``).

Two formats, detected per line:

- multiple choice, as published with the Constitutional AI paper: a ``prompt`` that ends with the
  options and "The answer is:", plus ``corrects`` and ``incorrects`` lists of option strings. Each
  option is scored as the continuation of the prompt (the whole string's log-prob); the model is
  right when its most likely option is a correct one.
- pairs: ``prompt``/``chosen``/``rejected``. Each pair is judged like a preference label (a drawn
  principle's comparison question, few-shot examples, option log-probs), in both orders.

Reports accuracy (overall and per order for pairs) and expected calibration error over 10 bins,
and each item's probabilities (``per_item``: the options', or P(chosen) in each order) so that a
result can be audited item by item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends import Backend
from ..constitution import Constitution
from ..errors import InputError
from ..inputs import answer_text, input_error, prompt_item, read_rows
from ..judging import compare_chat
from ..stats import ece
from ..templates import render
from .preferences import ORDERS


def _softmax(xs: Sequence[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def load_eval(path: Path) -> tuple[list[dict], list[dict]]:
    """(multiple-choice items, pairs) from a JSONL file; errors name file:line."""
    if not path.exists():
        raise input_error(path, None, "file not found")
    mc, pairs = [], []
    for index, (line, row) in enumerate(read_rows(path), start=1):
        if "corrects" in row or "incorrects" in row:
            good, bad = row.get("corrects"), row.get("incorrects")
            if (
                not isinstance(row.get("prompt"), str)
                or not isinstance(good, list)
                or not isinstance(bad, list)
                or not good
                or not bad
            ):
                raise input_error(
                    path,
                    line,
                    "multiple choice needs a `prompt` string and non-empty "
                    "`corrects` and `incorrects` lists",
                )
            mc.append({"prompt": row["prompt"], "options": good + bad, "n_correct": len(good)})
        elif "chosen" in row and "rejected" in row:
            item = prompt_item(
                path,
                line,
                {k: v for k, v in row.items() if k != "chosen" and k != "rejected"},
                index,
            )
            pairs.append(
                {
                    "chat": item.chat,
                    "chosen": answer_text(path, line, row, "chosen"),
                    "rejected": answer_text(path, line, row, "rejected"),
                }
            )
        else:
            raise input_error(path, line, "expected `corrects`/`incorrects` or `chosen`/`rejected`")
    if not mc and not pairs:
        raise input_error(path, None, "no items (the file is empty)")
    return mc, pairs


def eval_multiple_choice(backend: Backend, items: list[dict]) -> dict[str, Any]:
    conf, right, per_item = [], [], []
    for item in items:
        scores = backend.choice_logprobs(
            [item["prompt"]], [" " + o.strip() for o in item["options"]]
        )[0]
        probs = _softmax(scores)
        best = max(range(len(probs)), key=probs.__getitem__)
        conf.append(probs[best])
        right.append(best < item["n_correct"])
        per_item.append({"probs": probs, "correct": right[-1]})
    return {
        "items": len(items),
        "accuracy": sum(right) / len(right),
        "ece": ece(conf, right),
        "per_item": per_item,
    }


def pair_prompts(
    backend: Backend, constitution: Constitution, pairs: list[dict], seed: int = 0
) -> tuple[list[str], list[tuple[int, str]]]:
    """The judge's text for every pair in both orders, and ``(pair index, order)`` of each."""
    prompts, meta = [], []
    for i, pair in enumerate(pairs):
        principle = constitution.draw(seed, "eval", i)
        for order in ORDERS:
            a, b = (
                (pair["chosen"], pair["rejected"])
                if order == "AB"
                else (pair["rejected"], pair["chosen"])
            )
            chat = compare_chat(constitution, pair["chat"], principle, a, b)
            prompts.append(backend.render(chat) + render("compare_answer"))
            meta.append((i, order))
    return prompts, meta


def eval_pairs(
    backend: Backend, constitution: Constitution, pairs: list[dict], seed: int = 0
) -> dict[str, Any]:
    prompts, meta = pair_prompts(backend, constitution, pairs, seed)
    scores = backend.choice_logprobs(prompts, ["A", "B"])
    p_chosen: dict[int, list[float]] = {}
    per_order = {o: [] for o in ORDERS}
    conf, right = [], []
    for (i, order), lp in zip(meta, scores):
        p_a = _softmax(lp)[0]
        pc = p_a if order == "AB" else 1 - p_a
        p_chosen.setdefault(i, []).append(pc)
        per_order[order].append(pc > 0.5)
        conf.append(max(p_a, 1 - p_a))
        right.append((p_a > 0.5) == (order == "AB"))
    both = [sum(v) / len(v) > 0.5 for v in p_chosen.values()]
    if not both:
        raise InputError("no pairs to evaluate")
    return {
        "pairs": len(pairs),
        "accuracy": sum(both) / len(both),
        "accuracy_chosen_first": sum(per_order["AB"]) / len(per_order["AB"]),
        "accuracy_chosen_second": sum(per_order["BA"]) / len(per_order["BA"]),
        "ece": ece(conf, right),
        "per_item": [{"p_chosen": dict(zip(ORDERS, p_chosen[i]))} for i in range(len(p_chosen))],
    }


def evaluate_labeler(
    path: Path, backend: Backend, constitution: Constitution, limit: int | None = None
) -> dict[str, Any]:
    mc, pairs = load_eval(path)
    mc, pairs = mc[:limit], pairs[:limit]
    check_context(path, backend, constitution, mc, pairs)
    out: dict[str, Any] = {"data": str(path), "model": backend.model_label}
    if mc:
        out["multiple_choice"] = eval_multiple_choice(backend, mc)
    if pairs:
        out["pairs"] = eval_pairs(backend, constitution, pairs)
    return out


def check_context(
    path: Path, backend: Backend, constitution: Constitution, mc: list[dict], pairs: list[dict]
) -> None:
    """Refuse, before any item is scored, an item whose scored text (its prompt and an option,
    or the comparison) and the one token read after it are longer than the model's context.
    Nothing is cut: a cut item would measure something else than its label says."""
    context = getattr(backend, "context_length", None)
    if context is None:
        return
    texts = [
        (f"multiple-choice item {i + 1}", it["prompt"] + " " + o.strip())
        for i, it in enumerate(mc)
        for o in it["options"]
    ]
    prompts, meta = pair_prompts(backend, constitution, pairs)
    texts += [(f"pair {i + 1}", t) for t, (i, _) in zip(prompts, meta)]
    sizes = backend.count_tokens([t for _, t in texts])
    over: dict[str, int] = {}  # item -> its longest scored text
    for (what, _), n in zip(texts, sizes):
        if n + 1 > context:
            over[what] = max(n + 1, over.get(what, 0))
    if over:
        what, n = next(iter(over.items()))
        more = f" (and {len(over) - 1} more items)" if len(over) > 1 else ""
        raise InputError(
            f"{path}: {what} needs {n:,} tokens{more} but the model's context is {context:,}; "
            "shorten it or leave it out"
        )


def dumps(result: dict[str, Any], per_item: bool = True) -> str:
    """The result as JSON; without ``per_item``, the summary alone."""
    if not per_item:
        result = {
            k: {kk: vv for kk, vv in v.items() if kk != "per_item"} if isinstance(v, dict) else v
            for k, v in result.items()
        }
    return json.dumps(result, indent=2)


def run_labeler(cfg) -> dict[str, Any]:
    """``eval labeler`` as a run: ``cfg`` is a :class:`cai.config.LabelerConfig`. The data is
    checked before the model loads; the result (with the engine's record) is written to
    ``cfg.out`` when given, item by item, and returned."""
    from ..backends import engine_record, make_backend
    from ..constitution import load_constitution
    from ..store import write_atomic

    cons = load_constitution(cfg.constitution)
    load_eval(cfg.data)  # bad data fails before a model loads
    chosen, options = cfg.engine()
    engine = make_backend(chosen, cfg.model, **options)
    result = {
        **evaluate_labeler(cfg.data, engine, cons, cfg.limit),
        "engine": engine_record(engine),
    }
    if cfg.out:
        write_atomic(cfg.out, dumps(result) + "\n")
    return result
