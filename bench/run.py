"""Benchmarks that run our engine and the common alternative side by side, in one process.

``make bench`` runs them on the default model and writes ``bench/results.jsonl``: one JSON object
per benchmark with ``name``, ``ours``, ``baseline``, ``ratio`` and ``unit``, then prints a table.

1. critique_revise_throughput: the SL-CAI stage (answer, critique, revise) on red-team prompts,
   our batched engine against a request-at-a-time loop that calls ``model.generate`` once per
   prompt per step, with the same chats, greedy decoding and the same token limit. Generated tokens
   per second. The baseline's rate does not depend on the number of prompts, so it runs on a
   subset (``--baseline-prompts``) to save time.
2. preference_labels: judging pairs of answers against constitution principles in both orders,
   our option log-prob scoring (one forward pass per judgement) against the common alternative of
   generating the judge's answer and parsing the letter out of it, through the same batched engine
   and the same prompts. Labels per second; the baseline's parse failures are reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cai.backends import Sampling, make_backend  # noqa: E402
from cai.constitution import load_constitution  # noqa: E402
from cai.inputs import load_prompts  # noqa: E402
from cai.stages.critique import CritiqueSettings, build_chat, critique_revise  # noqa: E402
from cai.store import RunDir  # noqa: E402


def one_request(backend, chat, max_new_tokens: int) -> tuple[str, int]:
    """One plain ``model.generate`` call for one chat (greedy), the way a simple loop does it."""
    import torch
    from transformers import GenerationConfig

    tok, model = backend.tok, backend.model
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=backend.stop_ids,
        pad_token_id=tok.pad_token_id,
    )
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, generation_config=config)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    end = next((k for k, t in enumerate(new) if t in backend.stop_ids), len(new))
    return tok.decode(new[:end], skip_special_tokens=True).strip(), len(new)


def baseline_loop(backend, cons, items, settings: CritiqueSettings) -> tuple[int, float]:
    """One ``model.generate`` call per prompt per step, no batching, no cache reuse."""
    limit = settings.sampling.max_new_tokens
    tokens, t0 = 0, time.perf_counter()
    for item in items:
        answer, n = one_request(backend, item.chat, limit)
        tokens += n
        for r in range(1, settings.rounds + 1):
            p = cons.principles[(r - 1) % len(cons.principles)]
            chat = build_chat(cons, item.chat, "critique", principle=p, answer=answer)
            critique, n = one_request(backend, chat, limit)
            tokens += n
            chat = build_chat(
                cons, item.chat, "revision", principle=p, answer=answer, critique=critique
            )
            revision, n = one_request(backend, chat, limit)
            tokens += n
            answer = revision or answer
    return tokens, time.perf_counter() - t0


def bench_critiques(args) -> dict:
    cons = load_constitution(HERE.parent / "constitutions" / "harmless.yaml")
    items = load_prompts("red-team", args.prompts)
    backend = make_backend("hf", "default", max_batch_size=args.batch_size)
    settings = CritiqueSettings(
        model="default",
        rounds=args.rounds,
        seed=0,
        sampling=Sampling(max_new_tokens=args.max_new_tokens),
    )
    with tempfile.TemporaryDirectory() as tmp, RunDir(Path(tmp) / "run") as run:
        t0 = time.perf_counter()
        summary = critique_revise(cons, items, backend, run, settings)
        ours_s = time.perf_counter() - t0
    ours = summary["generated_tokens_now"] / ours_s
    base_tokens, base_s = baseline_loop(backend, cons, items[: args.baseline_prompts], settings)
    base = base_tokens / base_s
    return {
        "name": "critique_revise_throughput",
        "ours": round(ours, 2),
        "baseline": round(base, 2),
        "ratio": round(ours / base, 2),
        "unit": "generated tokens/s",
        "prompts": len(items),
        "baseline_prompts": min(args.baseline_prompts, len(items)),
        "rounds": args.rounds,
        "max_new_tokens": args.max_new_tokens,
        "ours_seconds": round(ours_s, 1),
        "baseline_seconds": round(base_s, 1),
    }


def bench_labels(args) -> dict:
    import re

    from cai.stages.preferences import compare_chat
    from cai.templates import render

    cons = load_constitution(HERE.parent / "constitutions" / "harmless.yaml")
    items = load_prompts("red-team", args.label_prompts)
    backend = make_backend("hf", "default", max_batch_size=args.batch_size)
    answers = backend.generate(
        [it.chat for it in items], Sampling(max_new_tokens=48, temperature=0.8, n=2, seed=0)
    )
    chats = []
    for i, (item, pair) in enumerate(zip(items, answers)):
        for p in cons.draw_many(2, 0, i):
            for a, b in ((pair[0].text, pair[1].text), (pair[1].text, pair[0].text)):
                chats.append(compare_chat(cons, item.chat, p, a, b))
    prompts = [backend.render(c) + render("compare_answer") for c in chats]
    t0 = time.perf_counter()
    backend.choice_logprobs(prompts, ["A", "B"])
    ours_s = time.perf_counter() - t0
    sub = chats[: args.baseline_labels]
    t0 = time.perf_counter()
    outs = backend.generate(sub, Sampling(max_new_tokens=args.judge_max_new_tokens))
    base_s = time.perf_counter() - t0
    letter = re.compile(r"\(?\b([AB])\b\)?")
    failures = sum(letter.search(o[0].text) is None for o in outs)
    ours, base = len(prompts) / ours_s, len(sub) / base_s
    # the same judging as simple recipes run it: one generate call per judgement
    few = chats[: max(1, args.baseline_labels // 4)]
    t0 = time.perf_counter()
    answers_loop = [one_request(backend, c, args.judge_max_new_tokens) for c in few]
    loose = sum(letter.search(text) is None for text, _ in answers_loop)
    loop = len(few) / (time.perf_counter() - t0)
    mean_tokens = sum(o[0].tokens for o in outs) / len(outs)
    common = {
        "unit": "labels/s",
        "judgements": len(prompts),
        "baseline_max_new_tokens": args.judge_max_new_tokens,
        "baseline_mean_tokens": round(mean_tokens, 1),
    }
    return [
        {
            "name": "preference_labels",
            "ours": round(ours, 2),
            "baseline": round(base, 2),
            "ratio": round(ours / base, 2),
            **common,
            "baseline_kind": "generate and parse, batched through the same engine",
            "baseline_judgements": len(sub),
            "baseline_parse_failures": failures,
        },
        {
            "name": "preference_labels_vs_loop",
            "ours": round(ours, 2),
            "baseline": round(loop, 2),
            "ratio": round(ours / loop, 2),
            **common,
            "baseline_kind": "generate and parse, one model.generate call per judgement",
            "baseline_judgements": len(few),
            "baseline_parse_failures": loose,
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--baseline-prompts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--label-prompts", type=int, default=16)
    ap.add_argument("--baseline-labels", type=int, default=16)
    ap.add_argument(
        "--judge-max-new-tokens",
        type=int,
        default=256,
        help="baseline: the judge writes its answer until end of turn or this cap",
    )
    ap.add_argument("--only", choices=["critiques", "labels"], default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results.jsonl")
    args = ap.parse_args()
    machine = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    benches = {"critiques": bench_critiques, "labels": bench_labels}
    results = []
    for name, fn in benches.items():
        if args.only in (None, name):
            rows = fn(args)
            results += rows if isinstance(rows, list) else [rows]
    if args.only and args.out.exists():  # keep the other benchmarks' last rows
        names = {r["name"] for r in results}
        old = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()]
        results = [r for r in old if r["name"] not in names] + results
    with open(args.out, "w") as f:
        for r in results:
            f.write(json.dumps({"machine": machine, **r}) + "\n")
    print(f"{'benchmark':<30} {'ours':>10} {'baseline':>10} {'ratio':>7}  unit")
    for r in results:
        print(f"{r['name']:<30} {r['ours']:>10} {r['baseline']:>10} {r['ratio']:>6}x  {r['unit']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
