"""transformers engine: the CPU default.

Handles: chat templating, length-sorted left-padded batches under a token budget, greedy or
sampled decoding with ``n`` samples per chat, stop at the tokenizer's end-of-turn token, and
option log-probs from one forward pass. Does not handle: tensor parallelism or paged attention
(use the vllm engine on a GPU).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ..errors import InputError
from ..models import ResolvedModel
from . import Chat, Completion, Progress, Sampling


class HFBackend:
    name = "hf"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        dtype: str = "float32",
        max_batch_size: int = 32,
        token_budget: int = 32768,
        chunk_size: int = 64,
        threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # cai shows its own progress
        hf_logging.set_verbosity_error()
        self.torch = torch
        self.model_label = model.label
        self.max_batch_size = max_batch_size
        self.token_budget = token_budget
        self.chunk_size = chunk_size
        torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
        try:
            self.tok = AutoTokenizer.from_pretrained(model.path, trust_remote_code=False)
            self.model = AutoModelForCausalLM.from_pretrained(
                model.path, dtype=getattr(torch, dtype), trust_remote_code=False
            )
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"cannot load model {model.path!r}: {first}") from None
        self.model.eval()
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if getattr(self.tok, "chat_template", None) is None:
            raise InputError(f"model {model.path!r} has no chat template in its tokenizer")
        self.stop_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        ids = {self.tok.eos_token_id}
        gen = self.model.generation_config.eos_token_id
        ids.update(gen if isinstance(gen, list) else [gen])
        return sorted(i for i in ids if i is not None)

    def render(self, chat: Chat) -> str:
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def _batches(self, lengths: list[int], per_row: int) -> list[list[int]]:
        """Indices sorted longest first, cut into batches under the size and token budgets."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            if batches:
                cur = batches[-1]
                rows = len(cur) + 1
                width = lengths[cur[0]] + per_row
                if rows <= self.max_batch_size and rows * width <= self.token_budget:
                    cur.append(i)
                    continue
            batches.append([i])
        return batches

    def generate(
        self, chats: Sequence[Chat], params: Sampling, progress: Progress | None = None
    ) -> list[list[Completion]]:
        torch = self.torch
        ids = self._encode([self.render(c) for c in chats])
        out: list[list[Completion]] = [[] for _ in chats]
        rows_per_chat = params.n
        self.max_batch_size = max(self.max_batch_size, 1)
        for b, batch in enumerate(self._batches([len(x) for x in ids], params.max_new_tokens)):
            # keep rows x n under the batch size: split the batch when n > 1
            step = max(1, self.max_batch_size // rows_per_chat)
            for s in range(0, len(batch), step):
                part = batch[s : s + step]
                torch.manual_seed(params.seed * 1_000_003 + b * 1009 + s)
                for i, comps in zip(part, self._generate_batch([ids[i] for i in part], params)):
                    out[i] = comps
                if progress:
                    progress(len(part), sum(c.tokens for i in part for c in out[i]))
        return out

    def _generate_batch(self, rows: list[list[int]], params: Sampling) -> list[list[Completion]]:
        torch = self.torch
        from transformers import GenerationConfig

        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=0 if sample else None,
            num_return_sequences=params.n,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
        )
        with torch.inference_mode():
            gen = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        new = gen[:, width:].tolist()
        result: list[list[Completion]] = []
        for r in range(len(rows)):
            comps = []
            for seq in new[r * params.n : (r + 1) * params.n]:
                end = next((k for k, t in enumerate(seq) if t in self.stop_ids), None)
                kept = seq if end is None else seq[:end]
                text = self.tok.decode(kept, skip_special_tokens=True).strip()
                reason = "length" if end is None else "stop"
                comps.append(Completion(text, len(kept) + (end is not None), reason))
            result.append(comps)
        return result

    def choice_logprobs(
        self, prompts: Sequence[Chat | str], choices: Sequence[str]
    ) -> list[list[float]]:
        """Log-prob of each choice's first token after each prompt (chats get the template)."""
        torch = self.torch
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        choice_ids = []
        for c in choices:
            toks = self._encode([c])[0]
            if not toks:
                raise InputError(f"choice {c!r} encodes to no tokens")
            choice_ids.append(toks[0])
        if len(set(choice_ids)) != len(choice_ids):
            raise InputError(f"choices {list(choices)} share a first token; cannot tell them apart")
        ids = self._encode(texts)
        out: list[list[float]] = [[] for _ in texts]
        for batch in self._batches([len(x) for x in ids], 0):
            width = max(len(ids[i]) for i in batch)
            pad = self.tok.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in batch])
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in batch])
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1)[:, choice_ids].tolist()
            for i, row in zip(batch, logp):
                out[i] = [v if math.isfinite(v) else -1e9 for v in row]
        return out
