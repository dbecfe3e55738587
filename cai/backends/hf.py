"""transformers engine: the CPU default.

Handles: chat templating, length-sorted left-padded batches sized to the memory available,
prefilled in groups of rows of similar length, greedy or sampled decoding with ``n`` samples per
chat, stop at the tokenizer's end-of-turn token, a shared-prefix KV cache held once per batch, the
last call's rows reused by prompts that begin like them (a revision after its critique, the next
round's critique after the revision, options scored after written reasoning), bf16 linear weights
packed once for oneDNN, and option log-probs from one forward pass. Does not handle: tensor
parallelism or paged attention (use the vllm engine on a GPU).
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import InputError
from ..models import ResolvedModel
from . import Chat, Completion, Progress, Sampling
from .kvcache import GrowingLayer, SharedPrefixLayer, make_cache


@dataclass
class _Kept:
    """A finished row's tokens (prompt, then generated tokens fed back) and where its keys and
    values are: row ``row`` of the batch cache ``past``, own token k at ``positions[k]``
    (its own part starting after a shared prefix of ``prefix`` tokens)."""

    tokens: tuple[int, ...]
    prefix: int
    past: object
    row: int
    positions: object


class _Layout(NamedTuple):
    """A batch's own part after the shared prefix: per row, how many own tokens come from a
    kept row (right-aligned in the first ``held`` positions) and the tokens to compute (in the
    last ``width - held``); ``mask`` covers the prefix and the own part."""

    reused: list[int]
    computed: list[list[int]]
    mask: object
    held: int
    width: int

    @property
    def positions(self):
        """Each token's position in its row, the padding before it not counted."""
        return (self.mask.cumsum(-1) - 1).clamp(min=0)


def keep_freed_memory() -> None:
    """Stop glibc from unmapping large freed blocks (it then page-faults them back each step).

    Every forward pass frees and reallocates activations of tens of MB; by default glibc returns
    them to the OS, and the next pass pays for zeroed pages again. Measured here on a 12-prompt
    critique batch: 64 s -> 27 s wall, system time 63 s -> 0.2 s. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def small_kernel_caches(entries: int = 16) -> None:
    """Cap oneDNN's and ideep's caches of compiled kernels (one per matrix shape, 1,024 each by
    default) unless the environment sets them; read when torch first runs such a kernel.

    Every batch meets new shapes (its width; each decoding step too, when attention multiplied only
    the filled part of the cache), so the default caches fill with kernels used once. ``make bench``
    (scaling rows) on the critique stage at 128 prompts: peak memory above the model 126, 126 and
    123 MB with 8 entries in three full runs, 139 MB with 16 in a fourth; 361, 230, 280 and 260 MB
    with the defaults. Not fewer than 16: a decoding step with a shared prefix uses 8 shapes per
    layer (4 linear, 4 attention products) and one for the LM head, and with 8 entries each step
    missed 8 kernels (counted with ``ONEDNN_VERBOSE=all``), at about 0.6 ms a miss.
    """
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(entries))


class _Packed:
    """A linear layer's forward with its weight reordered once into oneDNN's blocked layout."""

    def __init__(self, torch, weight, bias):
        self.ops = torch.ops.mkldnn
        self.weight = self.ops._reorder_linear_weight(weight.detach())
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x):
        return self.ops._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def pack_linears(model) -> int:
    """Give every bfloat16 ``nn.Linear`` of ``model`` a forward that reads its weight reordered
    once into oneDNN's blocked layout (the ops torch.compile uses for CPU inference); returns
    how many were packed, 0 where this torch has no such ops. :func:`unpack_linears` undoes it.

    A plain bf16 ``linear`` hands oneDNN the weight as stored, and every call copies it into
    blocks first. Measured here (2 cores), the same products, bit for bit: 64 rows x 576 ->
    1,536 took 0.32 ms plain and 0.27 packed, the 49,152-token LM head 11.4 ms and 9.3, one
    row 0.06 and 0.03; a prefill's thousands of rows gain nothing. The packed copies take the
    linear weights' memory once more (270 MB for the default model, its tied LM head included).
    Each layer is checked against the plain product once; any difference and none is packed.
    """
    import torch

    mkldnn = getattr(torch.ops, "mkldnn", None)
    if not (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")):
        return 0
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16
    ]
    rng = torch.Generator().manual_seed(0)  # the probes leave torch's global seed alone
    try:
        with torch.inference_mode():
            for m in layers:
                m.forward = _Packed(torch, m.weight, m.bias)
                probe = torch.randn(3, m.in_features, generator=rng).to(m.weight.dtype)
                plain = torch.nn.functional.linear(probe, m.weight, m.bias)
                if not torch.equal(m.forward(probe), plain):
                    raise RuntimeError("packed linear differs")
    except RuntimeError:
        unpack_linears(model)
        return 0
    return len(layers)


def unpack_linears(model) -> None:
    """Give packed linear layers back their plain forward."""
    for m in model.modules():
        if isinstance(m.__dict__.get("forward"), _Packed):
            del m.forward


DTYPES = ("auto", "float32", "bfloat16")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str) -> str:
    """``auto`` is bfloat16 where the CPU computes it natively, else float32.

    Without native support torch emulates bf16 matmuls and they are slower than fp32. Greedy
    parity with fp32 is checked in tests/test_hf_backend.py and reported by ``make bench``.
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if cpu_has_bf16() else "float32"


def mem_available() -> int | None:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def bytes_per_token(config, itemsize: int) -> int:
    """Memory one token of one row holds during a forward pass: its keys and values in every
    layer, plus the widest activations of a layer (hidden states, q/k/v/o, the MLP's two
    intermediate tensors and their product), counted in fp32 to be safe."""
    text = getattr(config, "text_config", None) or config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inter = getattr(text, "intermediate_size", None) or 4 * hidden
    kv = 2 * text.num_hidden_layers * kv_heads * head_dim * itemsize
    return kv + (6 * hidden + 3 * inter) * 4


def memory_budget_of(available: int | None, share: float = 0.5) -> int:
    """Bytes one batch may use: ``share`` of the memory available now (after the weights are
    loaded), at least 256 MiB; 4 GiB when the available memory is unknown."""
    if not available:
        return 4 << 30
    return max(256 << 20, int(share * available))


class HFBackend:
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
        self.group_rows, self.group_overhead = 8, 64  # see _groups
        self._prefix: tuple[tuple[int, ...], object] | None = None
        # the last generate call's rows, whose keys and values a later prompt may begin with
        self._kept: list[_Kept] = []
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
            from .attention import register

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

    def splits_cleanly(self, text: str, choices: Sequence[str]) -> bool:
        """Whether every ``text + choice`` tokenizes as ``text`` then ``choice`` (no merge)."""
        enc = lambda t: self.tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        base = enc(text)
        return all(enc(text + c) == base + enc(c) for c in choices)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False)["input_ids"]

    def _sharing(self) -> bool:
        """Whether the batch's shared prefix is held once (our attention reads it so) rather than
        copied into every row."""
        from .attention import NAME

        return self.share_prefix and self.model.config._attn_implementation == NAME

    def batch_bytes(self, rows: int, tail: int, shared: int = 0) -> int:
        """Peak memory of a forward pass over ``rows`` rows of ``tail`` own tokens after a
        ``shared`` prefix: every row's keys, values and activations for its tokens (the prefix's
        too when each row holds its own copy of it), plus one layer's attention scores."""
        total = shared + tail
        own = tail if self._sharing() else total
        return rows * (own * self._per_token + self._heads * tail * total * 4)

    def _batches(
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
        ids = self._encode([c if isinstance(c, str) else self.render(c) for c in chats])
        shared = self._shared_prefix(ids)
        found = self._find_kept(ids, shared)
        self._kept = []  # replaced by this call's rows
        out: list[list[Completion]] = [[] for _ in chats]
        step = max(1, self.max_batch_size // params.n)  # rows x samples under the batch size
        for b, batch in enumerate(
            self._batches([len(x) - shared for x in ids], params.max_new_tokens, shared, params.n)
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
        self._prefix = None
        self._kept = []

    def _find_kept(
        self, ids: list[list[int]], shared: int, last: Sequence[int] | None = None
    ) -> list[tuple[_Kept, int] | None]:
        """Per row, the kept row of the last call (its prompt, then the generated tokens fed
        back) that begins with the longest run of this row's tokens, and how many of this row's
        own tokens after ``shared`` that run covers, leaving the row's ``last`` tokens (1 by
        default) to compute. A revision prompt extends its critique row (prompt and critique);
        the next round's critique prompt shares its question with the last revision row."""
        found: list[tuple[_Kept, int] | None] = [None] * len(ids)
        if not self._kept or not shared or not self._sharing():
            return found
        # kept rows by their tokens up to the first past our shared prefix, whose own part does
        # not start inside it
        index: dict[tuple[int, ...], list[_Kept]] = {}
        for kept in self._kept:
            if kept.prefix <= shared < len(kept.tokens):
                index.setdefault(kept.tokens[: shared + 1], []).append(kept)
        for i, x in enumerate(ids):
            best, best_end = None, shared
            for kept in index.get(tuple(x[: shared + 1]), ()):
                end, toks = shared + 1, kept.tokens
                while end < len(toks) and end < len(x) and toks[end] == x[end]:
                    end += 1
                if end > best_end:
                    best, best_end = kept, end
            covered = min(best_end, len(x) - (last[i] if last else 1)) - shared
            if best is not None and covered > 0:
                found[i] = (best, covered)
        return found

    def _layout(self, tails: list[list[int]], reuse, shared: int, spans=None) -> _Layout:
        """How many of each row's own tokens come from a kept row (``reuse``) and the rest to
        compute: ``[shared prefix][padding][reused][padding][computed]``, the reused part
        right-aligned, the computed part as wide as the widest row's. A row that reuses
        computes ``spans[i]`` tokens (default: as many as the row that needs most), recomputing
        kept ones if it needs fewer, so that rows computed together form a rectangle."""
        reused = [0] * len(tails)
        if reuse and any(reuse) and self._sharing():
            if spans is None:
                spans = [max(self._needs(tails, reuse))] * len(tails)
            reused = [max(0, len(t) - w) if u else 0 for t, w, u in zip(tails, spans, reuse)]
        held = max(reused)
        computed = [t[r:] for t, r in zip(tails, reused)]
        wide = max(len(c) for c in computed)
        mask = self.torch.tensor(
            [
                [1] * shared + [0] * (held - r) + [1] * r + [0] * (wide - len(c)) + [1] * len(c)
                for r, c in zip(reused, computed)
            ]
        )
        return _Layout(reused, computed, mask, held, held + wide)

    @staticmethod
    def _needs(tails: list[list[int]], reuse) -> list[int]:
        """Per row, how many of its own tokens have no kept keys and values to read."""
        reuse = reuse or [None] * len(tails)
        return [len(t) - (u[1] if u else 0) for t, u in zip(tails, reuse)]

    def _groups(self, needs: list[int]) -> list[list[int]]:
        """Rows cut into groups of similar need, each computed as its own rectangle (its widest
        row's width): the cuts that minimise the tokens computed, padding included, plus
        ``group_overhead`` tokens' worth per forward pass, each group ``group_rows`` rows or
        more (a product over fewer rows runs the CPU below its rate)."""
        least, overhead = self.group_rows, self.group_overhead
        order = sorted(range(len(needs)), key=lambda i: needs[i])
        n = len(order)
        best = [0.0] + [math.inf] * n  # best[k]: cost of the k rows of least need
        cut = [0] * (n + 1)
        for k in range(1, n + 1):
            for j in range(k):
                if (k - j < least and not (j == 0 and k == n)) or best[j] == math.inf:
                    continue
                cost = best[j] + (k - j) * needs[order[k - 1]] + overhead
                if cost < best[k]:
                    best[k], cut[k] = cost, j
        groups, k = [], n
        while k > 0:
            groups.append(order[cut[k] : k])
            k = cut[k]
        return groups[::-1]

    def _prefill(self, past, input_ids, lay: _Layout, shared: int, groups, prefix_kv) -> None:
        """Compute every row's prompt but its last token into ``past``, one group of rows at a
        time, each as wide as its widest row; ``generate`` then starts from the last token.

        One rectangle for the whole batch computes every row as wide as the widest: the
        revision prompts of a critique run need 69 to 100 new tokens each (measured), so a
        fifth of that rectangle is padding. A group's tokens sit where the whole batch's would
        (right-aligned, the same positions and mask), in a cache of its own that is then
        copied into ``past``.
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
                self.model.config, len(group), held + span - 1, prefix_kv, prefix_kv is not None
            )
            if held:
                for layer, big in zip(cache.layers, layers):
                    layer.update(big._k[idx, :, :held], big._v[idx, :, :held])
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
                if not big.is_initialized:
                    like = layer._k.new_empty(rows, *layer._k.shape[1:])
                    big.lazy_initialization(like, like)
                big._k[idx, :, width - span : width - 1] = layer._k[:, :, held : held + span - 1]
                big._v[idx, :, width - span : width - 1] = layer._v[:, :, held : held + span - 1]
        for big in layers:
            big.length = width - 1
            big._views()

    def _batch_cache(self, prefix: list[int], rows: int, own: int, lay: _Layout, reuse):
        """The KV cache a batch starts from: the shared ``prefix`` (held once, or copied into
        every row), room for ``own`` tokens of each row's own, and the kept rows' keys and values
        it reuses. transformers' own cache for a model with special layers; ``None`` for such a
        model without a prefix."""
        prefix_kv = self._prefix_kv(prefix) if prefix else None
        sharing = self._sharing()
        past = make_cache(
            self.model.config, rows, own + (0 if sharing else len(prefix)), prefix_kv, sharing
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
        """Remember the rows of a finished batch (their prompt and the generated tokens whose
        keys and values were computed, up to the stop token at ``ends[j]`` if any) for a next
        prompt that extends them."""
        if not (self.reuse_rows and shared and isinstance(past.layers[0], SharedPrefixLayer)):
            return
        torch = self.torch
        size = self._cache_bytes(past)
        held = {id(k.past): k.past for k in self._kept}
        if size + sum(self._cache_bytes(p) for p in held.values()) > self.memory_budget // 4:
            return  # kept rows hold at most a quarter of the batch memory budget
        for j, row in enumerate(rows):
            gen, end = gen_tokens[j], ends[j]
            n = min(fed, len(gen) if end is None else end + 1)
            own = torch.nonzero(own_mask[j]).flatten().tolist()
            positions = torch.tensor(own + list(range(width, width + n)))
            kept = _Kept(tuple(row) + tuple(gen[:n]), shared, past, j, positions)
            self._kept.append(kept)

    @staticmethod
    def _cache_bytes(past) -> int:
        return sum(t.nbytes for layer in past.layers for t in (layer._k, layer._v))

    def _shared_prefix(self, ids: list[list[int]]) -> int:
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
        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            with self.torch.inference_mode():
                out = self.model(input_ids=self.torch.tensor([prefix]), use_cache=True)
            self._prefix = (key, out.past_key_values)
        return self._prefix[1]

    def _generate_batch(
        self,
        rows: list[list[int]],
        shared: int,
        params: Sampling,
        reuse: list[tuple[_Kept, int] | None] | None = None,
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
        needs = self._needs(tails, reuse)
        groups = self._groups(needs) if self.group_prefill else [list(range(len(rows)))]
        spans = [0] * len(rows)
        for group in groups:
            span = max(needs[i] for i in group)
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
        for seq, end in zip(generated, ends):
            kept = seq if end is None else seq[:end]
            text = self.tok.decode(kept, skip_special_tokens=True).strip()
            reason = "length" if end is None else "stop"
            result.append(Completion(text, len(kept) + (end is not None), reason))
        return result

    def _fill_reused(self, past, reuse, reused, shared, held) -> None:
        """Put each row's reused keys and values, right-aligned, in the first ``held`` own
        positions of ``past`` (a fresh shared-prefix cache)."""
        torch = self.torch
        src = next(u[0] for u in reuse if u)
        for li, layer in enumerate(past.layers):
            k0 = src.past.layers[li]._k
            keys = k0.new_zeros(len(reuse), k0.shape[1], held, k0.shape[-1])
            values = torch.zeros_like(keys)
            for j, (u, r) in enumerate(zip(reuse, reused)):
                if not r:
                    continue
                kept = u[0]
                pos = kept.positions[shared - kept.prefix : shared - kept.prefix + r]
                old = kept.past.layers[li]
                keys[j, :, held - r :] = old._k[kept.row].index_select(-2, pos)
                values[j, :, held - r :] = old._v[kept.row].index_select(-2, pos)
            layer.update(keys, values)

    def choice_logprobs(
        self, prompts: Sequence[Chat | str], choices: Sequence[str]
    ) -> list[list[float]]:
        """Log-prob of each choice string as the continuation of each prompt.

        A chat gets the chat template (generation prompt included); a string is used as it is.
        When every choice is one distinct token, one forward pass per prompt reads them all;
        otherwise each (prompt, choice) is scored by teacher forcing, summing its tokens.
        """
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        choice_ids = self._encode(list(choices))
        if any(not c for c in choice_ids):
            raise InputError(f"a choice in {list(choices)} encodes to no tokens")
        ids = self._encode(texts)
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
        shared = self._shared_prefix(rows)
        shared = max(0, min(shared, min(len(r) - len(t) - 1 for r, t in zip(rows, targets))))
        if shared < self.min_prefix:
            shared = 0
        # the rows of the last generate call that these extend (options scored after written
        # reasoning): their keys and values are read, not computed
        found = self._find_kept(rows, shared, [len(t) + 1 for t in targets])
        out: list = [None] * len(rows)
        pad = self.tok.pad_token_id
        for batch in self._batches([len(r) - shared for r in rows], 0, shared):
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
