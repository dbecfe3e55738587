"""The hf engine: transformers on the CPU, the portable default.

Handles: chat templating, length-sorted left-padded batches sized to the memory available,
prefilled in groups of rows of similar length, greedy or sampled decoding with ``n`` samples per
chat, stop at the tokenizer's end-of-turn token, a shared-prefix KV cache held once per batch, the
last call's rows reused by prompts that begin like them (``reuse.py``), bf16 linear weights
packed once for oneDNN (``cpu.py``), and option log-probs from one forward pass. Does not handle:
tensor parallelism or paged attention (use the vllm engine on a GPU).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

from ...errors import InputError
from ...models import ResolvedModel
from .. import Chat, Completion, Progress, Sampling, config_context
from .attention import NAME, register
from .cpu import (
    bytes_per_token,
    keep_freed_memory,
    mem_available,
    memory_budget_of,
    pack_linears,
    resolve_dtype,
    small_kernel_caches,
)
from .kvcache import GrowingLayer, SharedPrefixLayer, make_cache
from .layout import Layout, needs, plan_layout, prefill_groups
from .reuse import KeptRow, Match, ReuseCache


class HFBackend:
    """The hf engine (see the module docstring); options are keyword arguments of
    ``make_backend("hf", model, ...)``.

    The engine is not stateless: ``reuse`` (:class:`ReuseCache`) holds what one call leaves
    for the next, the shared prefix's KV cache and the last ``generate`` call's rows, and a call
    computes only the keys and values it cannot read there (in float32 the same text as
    computing them all). :meth:`forget` empties it.
    """

    name = "hf"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        dtype: str = "auto",
        max_batch_size: int = 64,
        memory_budget: int | None = None,
        chunk_size: int | None = None,
        threads: int | None = None,
        prefix_cache: bool = True,
        min_prefix: int = 32,
        decode_attention: bool = True,
        share_prefix: bool = True,
        reuse_rows: bool = True,
        pack_weights: bool = True,
        group_prefill: bool = True,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # cai shows its own progress
        hf_logging.set_verbosity_error()
        keep_freed_memory()
        small_kernel_caches()
        self.torch = torch
        self.model_label = model.label
        self.max_batch_size = max_batch_size
        # a stage hands over one batch's prompts per call unless told otherwise: what a call
        # keeps for the next (its rows' keys and values) is then one batch, whatever the run's size
        self.chunk_size = chunk_size or max_batch_size
        self.prefix_cache = prefix_cache
        self.min_prefix = min_prefix
        self.share_prefix = share_prefix
        self.reuse_rows = reuse_rows
        self.group_prefill = group_prefill
        self.group_rows, self.group_overhead = 8, 64  # see layout.prefill_groups
        self.reuse = ReuseCache()
        self.reused_tokens = 0  # prompt tokens read from kept rows instead of computed
        torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
        self.dtype = resolve_dtype(dtype)
        try:
            self.tok = AutoTokenizer.from_pretrained(model.path, trust_remote_code=False)
            self.model = AutoModelForCausalLM.from_pretrained(
                model.path, dtype=getattr(torch, self.dtype), trust_remote_code=False
            )
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"cannot load model {model.path!r}: {first}") from None
        self.model.eval().requires_grad_(False)
        self.packed_linears = pack_linears(self.model) if pack_weights else 0
        if decode_attention and self.model.config._attn_implementation == "sdpa":
            self.model.set_attn_implementation(register())  # decoding steps; the rest is sdpa
        # Batches are cut to fit this many bytes: half the memory available once the weights
        # are loaded, unless given.
        self.memory_budget = memory_budget or memory_budget_of(mem_available())
        text = getattr(self.model.config, "text_config", None) or self.model.config
        self._heads = text.num_attention_heads
        self._per_token = bytes_per_token(self.model.config, getattr(torch, self.dtype).itemsize)
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

    @property
    def context_length(self) -> int | None:
        """The model config's context (``config_context``); else the tokenizer's
        ``model_max_length`` when it is a real figure (transformers sets a huge one when unset)."""
        found = config_context(self.model.config)
        if found is None and 0 < getattr(self.tok, "model_max_length", 0) < 10**8:
            found = int(self.tok.model_max_length)
        return found

    def splits_cleanly(self, text: str, choices: Sequence[str]) -> bool:
        """Whether every ``text + choice`` tokenizes as ``text`` then ``choice`` (no merge)."""
        enc = lambda t: self.tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        base = enc(text)
        return all(enc(text + c) == base + enc(c) for c in choices)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text as it is (no special tokens added): a rendered chat's ids."""
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def count_tokens(self, prompts: Sequence[Chat | str]) -> list[int]:
        return [len(x) for x in self.encode([self._text(p) for p in prompts])]

    def _text(self, prompt: Chat | str) -> str:
        return prompt if isinstance(prompt, str) else self.render(prompt)

    def _cai_attention(self) -> bool:
        """Whether the model's attention is ours (``cai_cpu``), which reads ``kvcache.CachedKV``."""
        return self.model.config._attn_implementation == NAME

    @property
    def shares_prefix(self) -> bool:
        """Whether a batch's shared prefix is held once (our attention reads it so) rather than
        copied into every row."""
        return self.share_prefix and self._cai_attention()

    def batch_bytes(self, rows: int, tail: int, shared: int = 0) -> int:
        """Peak memory of a forward pass over ``rows`` rows of ``tail`` own tokens after a
        ``shared`` prefix: every row's keys, values and activations for its tokens (the prefix's
        too when each row holds its own copy of it), plus one layer's attention scores."""
        total = shared + tail
        own = tail if self.shares_prefix else total
        return rows * (own * self._per_token + self._heads * tail * total * 4)

    def batches(
        self, lengths: list[int], per_row: int, shared: int = 0, copies: int = 1
    ) -> list[list[int]]:
        """Indices sorted longest first, cut into batches under the batch size and the memory
        budget (``batch_bytes`` of the batch's widest row, ``per_row`` new tokens included, each
        index standing for ``copies`` rows: the samples of one prompt)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            if batches:
                cur = batches[-1]
                rows = len(cur) + 1
                fits = self.batch_bytes(rows * copies, lengths[cur[0]] + per_row, shared)
                if rows <= self.max_batch_size and fits <= self.memory_budget:
                    cur.append(i)
                    continue
            batches.append([i])
        return batches

    def generate(
        self, chats: Sequence[Chat | str], params: Sampling, progress: Progress | None = None
    ) -> list[list[Completion]]:
        torch = self.torch
        ids = self.encode([self._text(c) for c in chats])
        shared = self.shared_prefix_length(ids)
        found = self._find_kept(ids, shared)
        self.reuse.rows = []  # replaced by this call's rows
        out: list[list[Completion]] = [[] for _ in chats]
        step = max(1, self.max_batch_size // params.n)  # rows x samples under the batch size
        for b, batch in enumerate(
            self.batches([len(x) - shared for x in ids], params.max_new_tokens, shared, params.n)
        ):
            for s in range(0, len(batch), step):
                part = batch[s : s + step]
                torch.manual_seed(params.seed * 1_000_003 + b * 1009 + s)
                rows = [ids[i] for i in part for _ in range(params.n)]
                reuse = [found[i] for i in part for _ in range(params.n)]
                comps = self._generate_batch(rows, shared, params, reuse)
                for j, i in enumerate(part):
                    out[i] = comps[j * params.n : (j + 1) * params.n]
                if progress:
                    progress(len(part), sum(c.tokens for c in comps))
        return out

    def forget(self) -> None:
        """Drop the cached prefix and the kept rows: the next call computes every token."""
        self.reuse.clear()

    def _find_kept(
        self, ids: list[list[int]], shared: int, last: Sequence[int] | None = None
    ) -> list[Match | None]:
        """Per row, the kept row whose keys and values it may read (``ReuseCache.find``); none
        unless the prefix is held once, as kept rows' caches hold it."""
        if not self.shares_prefix:
            return [None] * len(ids)
        return self.reuse.find(ids, shared, last)

    def _layout(self, tails, reuse, shared: int, spans=None) -> Layout:
        """``layout.plan_layout``, reading kept rows only when the prefix is held once."""
        return plan_layout(tails, reuse if self.shares_prefix else None, shared, spans)

    def _prefill(self, past, input_ids, lay: Layout, shared: int, groups, prefix_kv) -> None:
        """Compute every row's prompt but its last token into ``past``, one group of rows at a
        time, each as wide as its widest row; ``generate`` then starts from the last token.

        One rectangle for the whole batch would compute every row as wide as the widest, rows
        of very different lengths mostly padding. A group's tokens sit where the whole batch's
        would (right-aligned, the same positions and mask), in a cache of its own that is then
        written into ``past``.
        """
        torch = self.torch
        width, held = lay.width, lay.held
        positions = lay.positions
        layers = past.layers
        rows = len(input_ids)
        for group in groups:
            span = max(len(lay.computed[i]) for i in group)
            if span <= 1:
                continue
            idx = torch.tensor(group)
            start, stop = shared + width - span, shared + width - 1
            mask = torch.cat([lay.mask[idx, : shared + held], lay.mask[idx, start:stop]], dim=1)
            cache = make_cache(
                self.model.config,
                len(group),
                held + span - 1,
                prefix_kv,
                prefix_kv is not None,
                self._cai_attention(),
            )
            if held:
                for layer, big in zip(cache.layers, layers):
                    layer.update(big.keys[idx, :, :held], big.values[idx, :, :held])
            with torch.inference_mode():
                self.model(
                    input_ids=input_ids[idx, start:stop],
                    attention_mask=mask,
                    position_ids=positions[idx, start:stop],
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            for layer, big in zip(cache.layers, layers):
                keys, values = layer.keys[:, :, held:], layer.values[:, :, held:]
                big.write(idx, width - span, keys, values, batch=rows)
        for big in layers:
            big.set_length(width - 1)

    def _batch_cache(self, prefix: list[int], rows: int, own: int, lay: Layout, reuse):
        """The KV cache a batch starts from: the shared ``prefix`` (held once, or copied into
        every row), room for ``own`` tokens of each row's own, and the kept rows' keys and values
        it reuses. transformers' own cache for a model with special layers; ``None`` for such a
        model without a prefix."""
        prefix_kv = self._prefix_kv(prefix) if prefix else None
        sharing = self.shares_prefix
        past = make_cache(
            self.model.config,
            rows,
            own + (0 if sharing else len(prefix)),
            prefix_kv,
            sharing,
            self._cai_attention(),
        )
        if past is None:
            if prefix_kv is not None:
                past = copy.deepcopy(prefix_kv)
                past.batch_repeat_interleave(rows)
            return past
        if lay.held:
            self._fill_reused(past, reuse, lay.reused, len(prefix), lay.held)
            self.reused_tokens += sum(lay.reused)
        return past

    def _keep(self, rows, shared, width, own_mask, gen_tokens, ends, fed, past) -> None:
        """Keep the rows of a finished batch (their prompt and the generated tokens whose keys
        and values were computed, up to the stop token at ``ends[j]`` if any) for a next prompt
        that extends them, unless the kept rows would then hold more than a quarter of the batch
        memory budget."""
        if not (self.reuse_rows and shared and isinstance(past.layers[0], SharedPrefixLayer)):
            return
        if not self.reuse.has_room(past, self.memory_budget // 4):
            return
        torch = self.torch
        for j, row in enumerate(rows):
            gen, end = gen_tokens[j], ends[j]
            n = min(fed, len(gen) if end is None else end + 1)
            own = torch.nonzero(own_mask[j]).flatten().tolist()
            positions = torch.tensor(own + list(range(width, width + n)))
            kept = KeptRow(tuple(row) + tuple(gen[:n]), shared, past, j, positions)
            self.reuse.rows.append(kept)

    def shared_prefix_length(self, ids: list[list[int]]) -> int:
        """Length of the token prefix all rows share (the few-shot block), if worth caching.

        Every row keeps at least one token of its own, so the last prompt position is always
        computed in the batch.
        """
        if not self.prefix_cache or len(ids) < 2:
            return 0
        n = min(len(os.path.commonprefix(ids)), min(len(x) for x in ids) - 1)
        return n if n >= self.min_prefix else 0

    def _prefix_kv(self, prefix: list[int]):
        """The KV cache of ``prefix`` (batch 1), computed once and kept for the next call."""
        kv = self.reuse.prefix_for(prefix)
        if kv is None:
            with self.torch.inference_mode():
                out = self.model(input_ids=self.torch.tensor([prefix]), use_cache=True)
            kv = out.past_key_values
            self.reuse.hold_prefix(prefix, kv)
        return kv

    def _generate_batch(
        self,
        rows: list[list[int]],
        shared: int,
        params: Sampling,
        reuse: list[Match | None] | None = None,
    ) -> list[Completion]:
        """Generate for ``rows``; the first ``shared`` tokens are common and come from the cache.

        Layout: ``[shared prefix][left padding][own tokens]``; the attention mask hides the
        padding and position ids follow the mask, so each row is computed as if alone. Rows
        that extend a kept row (``reuse``) take that many of their own tokens' keys and values
        from it: ``[shared prefix][padding][reused][padding][computed]``, the computed part as
        wide as the widest row's.
        """
        torch = self.torch
        from transformers import GenerationConfig

        pad = self.tok.pad_token_id
        tails = [r[shared:] for r in rows]
        need = needs(tails, reuse)
        groups = [list(range(len(rows)))]
        if self.group_prefill:
            groups = prefill_groups(need, self.group_rows, self.group_overhead)
        spans = [0] * len(rows)
        for group in groups:
            span = max(need[i] for i in group)
            for i in group:
                spans[i] = span
        lay = self._layout(tails, reuse, shared, spans)
        held, width = lay.held, lay.width
        prefix = rows[0][:shared]
        input_ids = torch.tensor(
            [
                prefix + [pad] * (held - r) + t[:r] + [pad] * (width - held - len(c)) + c
                for t, r, c in zip(tails, lay.reused, lay.computed)
            ]
        )
        extra = {}
        past = self._batch_cache(prefix, len(rows), width + params.max_new_tokens, lay, reuse)
        if past is not None:
            extra["past_key_values"] = past
            ours = isinstance(past.layers[0], SharedPrefixLayer if shared else GrowingLayer)
            if len(groups) > 1 and ours:
                prefix_kv = self._prefix_kv(prefix) if shared else None
                self._prefill(past, input_ids, lay, shared, groups, prefix_kv)
        sample = params.temperature > 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=0 if sample else None,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
        )
        with torch.inference_mode():
            gen = self.model.generate(
                input_ids=input_ids, attention_mask=lay.mask, generation_config=config, **extra
            )
        generated = gen[:, shared + width :].tolist()
        ends = [next((k for k, t in enumerate(s) if t in self.stop_ids), None) for s in generated]
        if past is not None:
            fed = gen.shape[1] - shared - width - 1  # the last token was never fed back
            self._keep(rows, shared, width, lay.mask[:, shared:], generated, ends, fed, past)
        result = []
        for row, seq, end in zip(rows, generated, ends):
            kept = seq if end is None else seq[:end]
            text = self.tok.decode(kept, skip_special_tokens=True).strip()
            reason = "length" if end is None else "stop"
            result.append(Completion(text, len(kept) + (end is not None), reason, len(row)))
        return result

    def _fill_reused(self, past, reuse: list[Match | None], reused, shared, held) -> None:
        """Put each row's reused keys and values, right-aligned, in the first ``held`` own
        positions of ``past`` (a fresh shared-prefix cache)."""
        torch = self.torch
        src = next(u.kept for u in reuse if u)
        for li, layer in enumerate(past.layers):
            k0 = src.cache.layers[li].keys
            keys = k0.new_zeros(len(reuse), k0.shape[1], held, k0.shape[-1])
            values = torch.zeros_like(keys)
            for j, (u, r) in enumerate(zip(reuse, reused)):
                if not r:
                    continue
                kept = u.kept
                old_k, old_v = kept.read(li, shared - kept.prefix, r)
                keys[j, :, held - r :] = old_k
                values[j, :, held - r :] = old_v
            layer.update(keys, values)

    def choice_logprobs(
        self, prompts: Sequence[Chat | str], choices: Sequence[str]
    ) -> list[list[float]]:
        """Log-prob of each choice string as the continuation of each prompt.

        A chat gets the chat template (generation prompt included); a string is used as it is.
        When every choice is one distinct token, one forward pass per prompt reads them all;
        otherwise each (prompt, choice) is scored by teacher forcing, summing its tokens.
        """
        texts = [self._text(p) for p in prompts]
        choice_ids = self.encode(list(choices))
        if any(not c for c in choice_ids):
            raise InputError(f"a choice in {list(choices)} encodes to no tokens")
        ids = self.encode(texts)
        if all(len(c) == 1 for c in choice_ids) and len({c[0] for c in choice_ids}) == len(choices):
            firsts = [c[0] for c in choice_ids]
            rows = self._score(ids, [[] for _ in ids], firsts)
            return [[_finite(v) for v in row] for row in rows]
        flat = self._score(
            [x + c for x in ids for c in choice_ids], [c for _ in ids for c in choice_ids], None
        )
        k = len(choices)
        return [[_finite(sum(v)) for v in flat[i * k : (i + 1) * k]] for i in range(len(ids))]

    def _score(self, rows: list[list[int]], targets: list[list[int]], read: list[int] | None):
        """Per row: log-probs of its ``targets`` (the row's last tokens), or with ``read``, the
        log-probs of those token ids at the next position after the whole row.

        Rows share their common prefix through one cached forward pass, like ``generate``.
        """
        torch = self.torch
        keep = max(len(t) for t in targets) + 1
        shared = self.shared_prefix_length(rows)
        shared = max(0, min(shared, min(len(r) - len(t) - 1 for r, t in zip(rows, targets))))
        if shared < self.min_prefix:
            shared = 0
        # the rows of the last generate call that these extend (options scored after written
        # reasoning): their keys and values are read, not computed
        found = self._find_kept(rows, shared, [len(t) + 1 for t in targets])
        out: list = [None] * len(rows)
        pad = self.tok.pad_token_id
        for batch in self.batches([len(r) - shared for r in rows], 0, shared):
            tails = [rows[i][shared:] for i in batch]
            reuse = [found[i] for i in batch]
            lay = self._layout(tails, reuse, shared)
            wide = lay.width - lay.held
            tail_ids = torch.tensor([[pad] * (wide - len(c)) + c for c in lay.computed])
            positions = lay.positions[:, shared + lay.held :]
            past = None
            if shared:
                prefix = rows[batch[0]][:shared]
                past = self._batch_cache(prefix, len(batch), lay.width, lay, reuse)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=tail_ids,
                    attention_mask=lay.mask,
                    position_ids=positions,
                    past_key_values=past,
                    use_cache=past is not None,
                    logits_to_keep=keep,
                ).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for j, i in enumerate(batch):
                if read is not None:
                    out[i] = logp[j, -1, read].tolist()
                else:
                    t = targets[i]
                    steps = logp[j, keep - len(t) - 1 : keep - 1]
                    out[i] = steps.gather(-1, torch.tensor(t)[:, None])[:, 0].tolist()
        return out


def _finite(v: float) -> float:
    return v if math.isfinite(v) else -1e9
