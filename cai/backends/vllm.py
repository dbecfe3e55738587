"""vLLM offline engine: the GPU path.

Chats are rendered with the model's own tokenizer (the same template the hf engine applies, so
both engines see identical tokens) and handed to ``vllm.LLM.generate`` as token ids in one call;
vLLM schedules the batch (continuous batching) and reuses shared prefixes (the few-shot block)
through automatic prefix caching. Imported only when this engine is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from ..models import ResolvedModel
from . import Chat, Completion, Progress, Sampling


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        chunk_size: int = 2048,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        dtype: str = "auto",
    ):
        try:
            from vllm import LLM
        except ImportError as err:
            raise InputError(
                f"the vllm engine is not installed ({err}); pip install -e '.[vllm]'"
            ) from None
        self.model_label = model.label
        self.chunk_size = chunk_size
        self.llm = LLM(
            model=model.path,
            enable_prefix_caching=True,
            trust_remote_code=False,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
        )
        self.tok = self.llm.get_tokenizer()

    def render(self, chat: Chat) -> str:
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def splits_cleanly(self, text: str, choices: Sequence[str]) -> bool:
        """Whether every ``text + choice`` tokenizes as ``text`` then ``choice`` (no merge)."""
        enc = lambda t: self.tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        base = enc(text)
        return all(enc(text + c) == base + enc(c) for c in choices)

    def _ids(self, texts: Sequence[str]) -> list[dict]:
        return [
            {"prompt_token_ids": self.tok(t, add_special_tokens=False)["input_ids"]} for t in texts
        ]

    def generate(
        self, chats: Sequence[Chat], params: Sampling, progress: Progress | None = None
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        sp = SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
        )
        outs = self.llm.generate(
            self._ids([c if isinstance(c, str) else self.render(c) for c in chats]),
            sp,
            use_tqdm=False,
        )
        result = [
            [
                Completion(
                    c.text.strip(),
                    len(c.token_ids),
                    "length" if c.finish_reason == "length" else "stop",
                )
                for c in o.outputs
            ]
            for o in outs
        ]
        if progress:
            progress(len(result), sum(c.tokens for r in result for c in r))
        return result

    def choice_logprobs(
        self, prompts: Sequence[Chat | str], choices: Sequence[str]
    ) -> list[list[float]]:
        """Log-prob of each choice's first token, read from prompt log-probs of prompt+choice."""
        from vllm import SamplingParams

        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        firsts = [self.tok(c, add_special_tokens=False)["input_ids"][:1] for c in choices]
        if any(not f for f in firsts) or len({f[0] for f in firsts}) != len(firsts):
            raise InputError(f"choices {list(choices)} are empty or share a first token")
        reqs = []
        for t in texts:
            ids = self.tok(t, add_special_tokens=False)["input_ids"]
            reqs += [{"prompt_token_ids": ids + f} for f in firsts]
        sp = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self.llm.generate(reqs, sp, use_tqdm=False)
        k = len(choices)
        result = []
        for i in range(len(texts)):
            row = []
            for j in range(k):
                last = outs[i * k + j].prompt_logprobs[-1]
                row.append(last[firsts[j][0]].logprob)
            result.append(row)
        return result
