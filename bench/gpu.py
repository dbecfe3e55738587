"""GPU benchmark: what the vllm engine adds on top of calling ``vllm.LLM.generate`` directly.

Run on a machine with a CUDA GPU and ``pip install -e '.[vllm]'``::

    python bench/gpu.py --model default --prompts 256 --max-new-tokens 128

Both sides get the same requests: the critique prompts of the SL-CAI stage for red-team prompts
(chat template applied, token ids), greedy, the same token limit, the same ``LLM`` object (so
weights, KV cache size and prefix cache settings are identical). The direct side calls
``llm.generate`` once with every request; our side calls ``VLLMBackend.generate`` with the chats,
which renders them, tokenizes them and builds ``Completion`` records. The claim to check
(issue #6): ours adds no more than 5% wall time. The two sides alternate for ``--repeats`` rounds
(after one warm-up each, so CUDA graphs and the prefix cache are warm for both) and the medians are
compared. One row goes into ``bench/results.jsonl`` (replacing an earlier one of the same name) in
the format of ``bench/run.py``.

Not run in CI: there is no GPU there. Nothing here is measured until someone runs it on one.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from run import critique_chats, save  # noqa: E402  (bench/run.py)

from cai.backends import Sampling  # noqa: E402
from cai.models import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=194)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results.jsonl")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (none found)")
    from vllm import SamplingParams

    from cai.backends.vllm import VLLMBackend

    backend = VLLMBackend(resolve_model(args.model))
    llm, tok = backend.llm, backend.tok
    chats = critique_chats(args.prompts, "Here is how you could do that, step by step.")
    params = Sampling(max_new_tokens=args.max_new_tokens)
    direct_params = SamplingParams(n=1, temperature=0.0, max_tokens=args.max_new_tokens, seed=0)

    def direct() -> int:
        reqs = [
            {
                "prompt_token_ids": tok(
                    tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False,
                )["input_ids"]
            }
            for c in chats
        ]
        t0 = time.perf_counter()  # the direct side is timed from the token ids on
        outs = llm.generate(reqs, direct_params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        direct.tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        return elapsed

    def ours() -> float:
        t0 = time.perf_counter()  # ours is timed from the chats on: templating is ours to pay
        outs = backend.generate(chats, params)
        elapsed = time.perf_counter() - t0
        ours.tokens = sum(o[0].tokens for o in outs)
        return elapsed

    direct(), ours()  # warm-up: CUDA graphs, prefix cache
    times: dict[str, list[float]] = {"direct": [], "ours": []}
    for _ in range(args.repeats):
        times["direct"].append(direct())
        times["ours"].append(ours())
    d, o = statistics.median(times["direct"]), statistics.median(times["ours"])
    if direct.tokens != ours.tokens:
        print(f"warning: token counts differ (direct {direct.tokens}, ours {ours.tokens})")
    row = {
        "machine": {"gpu": torch.cuda.get_device_name(0), "python": platform.python_version()},
        "name": "vllm_engine_overhead",
        "ours": round(o, 3),
        "baseline": round(d, 3),
        "ratio": round(o / d, 3),
        "unit": "seconds (median; lower is better; goal ratio <= 1.05)",
        "prompts": len(chats),
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": ours.tokens,
        "repeats": args.repeats,
    }
    save(args.out, [row])  # replaces an earlier vllm_engine_overhead row, keeps the others
    verdict = "within" if o / d <= 1.05 else "OVER"
    print(f"vllm.LLM.generate {d:.3f}s  cai vllm engine {o:.3f}s  ratio {o / d:.3f} ({verdict} 5%)")


if __name__ == "__main__":
    main()
