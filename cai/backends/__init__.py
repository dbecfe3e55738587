"""One small protocol, several engines.

Every engine takes the whole batch in one call and schedules it itself::

    backend = make_backend("hf", "default")
    outs = backend.generate([[{"role": "user", "content": "Hi"}]], Sampling(max_new_tokens=32))
    outs[0][0].text

``generate`` returns, for each chat, ``params.n`` completions, each carrying the number of prompt
tokens the engine sent for its chat. ``choice_logprobs`` returns, for each prompt, the
log-probability of each choice string as the next tokens (one forward pass, no sampling) and is how
preference labels are made; ``count_tokens`` says how many tokens such prompts are, and
``context_length`` how many the model reads at most (prompt and generated tokens together; None
where the engine cannot tell). Heavy imports
(torch, vllm) happen inside the engine modules, so importing this package is cheap. An engine
that holds memory a later model needs has ``close()``. ``openai`` drives OpenAI-compatible
servers (``vllm serve`` replicas), see :mod:`cai.backends.openai`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

from ..errors import InputError

Chat = list[dict[str, str]]
Progress = Callable[[int, int], None]  # (finished sequences, new tokens) since the last call


@dataclass(frozen=True)
class Sampling:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens (small models loop)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # generated
    finish_reason: Literal["stop", "length"]
    # tokens of the prompt it continues, as the engine sent it (its chat template applied): the
    # same for every sample of one chat; None where the engine cannot tell
    prompt_tokens: int | None = None


class Backend(Protocol):
    name: str
    model_label: str
    chunk_size: int  # prompts a stage should hand over per call to keep resume granularity sane

    def generate(
        self, chats: Sequence[Chat | str], params: Sampling, progress: Progress | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions per chat; a string is a prompt already templated."""
        ...

    def choice_logprobs(
        self, prompts: Sequence[Chat | str], choices: Sequence[str]
    ) -> list[list[float]]: ...

    def count_tokens(self, prompts: Sequence[Chat | str]) -> list[int]:
        """Tokens of each prompt as this engine sends it (a chat with its template applied)."""
        ...

    def splits_cleanly(self, text: str, choices: Sequence[str]) -> bool:
        """Whether every ``text + choice`` tokenizes as ``text`` followed by ``choice``."""
        ...

    def render(self, chat: Chat) -> str:
        """The exact text the model sees for ``chat`` (its chat template applied)."""
        ...

    @property
    def context_length(self) -> int | None:
        """Tokens the model reads at most, prompt and generated together (None: unknown)."""
        ...


BACKENDS = ("auto", "hf", "vllm", "openai")
DTYPES = ("auto", "float32", "bfloat16")  # what --dtype takes (hf and vllm)


def pick_backend(name: str, work: str = "generate") -> str:
    """The engine ``name`` means for ``work`` (``generate`` text or ``score`` options).

    ``auto`` follows the ``vllm_*`` rows of ``make bench`` (README: Engines): vllm where vLLM is
    installed and a CUDA GPU is present; on a CPU without native bfloat16, vllm to generate (it
    ran the critique stage faster) and hf to score options (the hf engine labelled faster); on a
    CPU with native bfloat16, hf (it kept pace with vLLM-CPU and starts in seconds).
    """
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "hf"
    import torch

    if torch.cuda.is_available():
        return "vllm"
    from .hf.cpu import cpu_has_bf16

    return "vllm" if work == "generate" and not cpu_has_bf16() else "hf"


# Where a model's config gives its context, as vLLM reads it: the smallest of these keys present.
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# RoPE scalings whose factor the config's length already includes
SCALED_ALREADY = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def config_context(config) -> int | None:
    """The context a transformers config gives, read as vLLM reads it (so the hf and vllm
    engines agree): the smallest length key present, times the RoPE scaling factor where the
    length does not include it yet; None when the config has no length key.

    >>> from types import SimpleNamespace as C
    >>> config_context(C(n_positions=2048, rope_scaling={"type": "linear", "factor": 2}))
    4096
    """
    config = getattr(config, "text_config", None) or config
    found = [getattr(config, k, None) for k in CONTEXT_KEYS]
    lengths = [int(v) for v in found if isinstance(v, int | float) and v > 0]
    if not lengths:
        return None
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    factor = 1.0
    if isinstance(rope, dict):
        scalings = [rope] if "factor" in rope or "rope_type" in rope or "type" in rope else []
        scalings += [v for v in rope.values() if isinstance(v, dict)]  # one per layer type
        for rp in scalings:
            kind = rp.get("rope_type") or rp.get("type") or "default"
            if kind not in SCALED_ALREADY and rp.get("factor"):
                factor = float(rp["factor"])
    return int(min(lengths) * factor)


def context_length(name: str, model: str, options: dict | None = None) -> int | None:
    """The context model ``model`` (a resolved folder or hub id; for ``openai`` the servers'
    name) has on engine ``name``, read without loading its weights: what the engine's
    ``context_length`` says once loaded. hf: the model's config; vllm: ``max_model_len`` when
    given, else the config as vLLM reads it; openai: what the servers report (None when none
    does)."""
    options = dict(options or {})
    if name == "openai":
        from .openai import OpenAIBackend

        try:
            engine = OpenAIBackend(model, **options)
        except InputError:
            return None
        try:
            return engine.context_length
        finally:
            engine.client.close()
    if name == "vllm" and options.get("max_model_len"):
        return int(options["max_model_len"])
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError):
        return None
    return config_context(config)


def engine_record(engine: Backend) -> dict:
    """What a manifest records about a loaded engine: name, dtype, device and its options."""
    info = engine.info() if hasattr(engine, "info") else {}
    return {"backend": engine.name, "dtype": getattr(engine, "dtype", None), **info}


def make_backend(name: str, model: str, **options) -> Backend:
    """Load ``model`` on the engine ``name`` (auto | hf | vllm | openai).

    For ``openai`` the model is the name the servers know it by; nothing is loaded here.
    """
    from ..models import resolve_model

    chosen = pick_backend(name)
    if chosen == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend(model, **options)
    resolved = resolve_model(model)
    if chosen == "hf":
        from .hf import HFBackend

        return HFBackend(resolved, **options)
    from .vllm import VLLMBackend

    return VLLMBackend(resolved, **options)
