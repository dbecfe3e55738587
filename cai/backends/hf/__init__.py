"""The hf engine: transformers on the CPU, with a KV cache and attention of our own.

Modules: ``engine`` (:class:`HFBackend`: batching, decoding, option log-probs), ``kvcache``
(a cache written in place, a prefix held once, and :class:`~.kvcache.CachedKV`, what it hands
the attention), ``attention`` (``cai_cpu``, the attention that reads it), ``layout`` (where a
batch's tokens sit, which rows are prefilled together), ``reuse`` (what one call keeps for the
next) and ``cpu`` (dtype, memory budget, allocator and oneDNN settings). Does not handle: GPUs
(use the vllm engine).
"""

from .cpu import (
    DTYPES,
    bytes_per_token,
    cpu_has_bf16,
    memory_budget_of,
    pack_linears,
    resolve_dtype,
    unpack_linears,
)
from .engine import HFBackend

__all__ = [
    "DTYPES",
    "HFBackend",
    "bytes_per_token",
    "cpu_has_bf16",
    "memory_budget_of",
    "pack_linears",
    "resolve_dtype",
    "unpack_linears",
]
