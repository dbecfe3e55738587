"""The machine side of the hf engine: dtype, memory budget, allocator and oneDNN settings.

Handles: choosing bf16 or fp32 from the CPU's flags, the memory a batch may use (from
``/proc/meminfo`` and the model's shapes), keeping glibc from returning freed activations to the
OS, capping oneDNN's kernel caches, and bf16 linear weights packed once for oneDNN. Does not
handle: GPUs, or operating systems without ``/proc`` (the defaults then apply).
"""

from __future__ import annotations

import ctypes
import os

from ...errors import InputError
from .. import DTYPES


def keep_freed_memory() -> None:
    """Stop glibc from unmapping large freed blocks, so that the activations every forward pass
    frees and allocates again are not page-faulted back from the OS each time. No-op off glibc.
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

    Every batch meets new shapes, so the default caches fill with kernels used once and hold
    memory. Not fewer than 16: a decoding step with a shared prefix uses 8 shapes per layer
    (4 linear, 4 attention products) and one for the LM head, and must not miss its own kernels.
    """
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(entries))


class PackedLinear:
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

    A plain bf16 ``linear`` hands oneDNN the weight as stored and every call reorders it first;
    packed, small products (decoding steps, the LM head) skip that copy. The packed copies take
    the linear weights' memory once more. Each layer is checked against the plain product once;
    any difference and none is packed.
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
                m.forward = PackedLinear(torch, m.weight, m.bias)
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
        if isinstance(m.__dict__.get("forward"), PackedLinear):
            del m.forward


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
