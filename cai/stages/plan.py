"""What a run would cost, counted with no model loaded (``--dry-run``, ``cai run --dry-run``).

A stage's planner (``plan_critiques``, ``plan_preferences``, ``plan_compare``, beside each runner)
builds the exact prompts its stage would send, with the stage's own chat builders, an answer not
written yet standing in as :meth:`PromptCounter.placeholder` (``max_new_tokens`` tokens, so the
figure is a ceiling, exact when every answer runs to the limit), and adds them up per step in a
:class:`Tally`. Work already in the run directory (keys in its JSONL logs) is left out.

:class:`PromptCounter` counts with the model's own tokenizer and chat template, loaded without its
weights: a local folder, the converted default model, a hub id in the local cache (or downloaded).
Where no tokenizer loads (a name only servers know, a hub id without network, a GGUF file not
converted yet, an unknown name) it estimates, one token per four characters, and says why. A call
is one prompt sent, all its samples included; its prompt tokens are counted once, as the engines
report them (:attr:`cai.backends.Completion.prompt_tokens`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import Chat
from ..errors import InputError
from ..models import ResolvedModel
from ..store import JsonlLog

CHARS_PER_TOKEN = 4  # the estimate where no tokenizer loads


class PromptCounter:
    """Prompt tokens of chats and texts as an engine running ``name`` would send them.

    >>> c = PromptCounter(None, "estimate: no tokenizer")
    >>> c.count([c.placeholder(3)])
    [3]
    """

    def __init__(self, tok, how: str, model: ResolvedModel | None = None):
        self.tok, self.how, self.model = tok, how, model
        # a check that a prompt fits gives an answer not written yet room for its text
        # tokenizing longer when read back than the tokens the model wrote (see ``placeholder``)
        self.spare = False
        self.word = "x"
        if tok is not None:  # a word that is one token however often it repeats
            for w in ("x", "a", "0", "the"):
                if len(self._ids([" ".join([w] * 16)])[0]) == 16:
                    self.word = w
                    break

    @classmethod
    def load(cls, backend: str, name: str) -> PromptCounter:
        """The counter for model ``name`` on engine ``backend`` (``hf``, ``vllm``, ``openai``)."""
        from ..models import resolve_for

        try:
            model = resolve_for(backend, name, convert=False)
        except InputError as err:
            return cls(None, f"estimate: {err}")
        return cls.of(model)

    @classmethod
    def of(cls, model: ResolvedModel) -> PromptCounter:
        """The counter for a resolved model (a folder, hub id or served name)."""
        tok, why = _tokenizer(model.path)
        if tok is None:
            return cls(None, f"estimate: {why}", model)
        return cls(tok, f"tokenizer and chat template of {model.path}", model)

    @property
    def exact(self) -> bool:
        return self.tok is not None

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    def render(self, chat: Chat) -> str:
        """The text the model reads for ``chat`` (what engines' ``render`` return)."""
        if self.tok is not None:
            return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n\n" for m in chat) + "assistant: "

    def count(self, prompts: Sequence[Chat | str]) -> list[int]:
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        if self.tok is None:
            return [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]
        return [len(x) for x in self._ids(texts)]

    def placeholder(self, n: int) -> str:
        """Text of ``n`` tokens: an answer not written yet, at its longest. With ``spare``,
        ``n // 16 + 2`` more: an answer is read back from its text, which may tokenize longer
        than the tokens written (a model's odd splits, a character cut by the limit).

        >>> c = PromptCounter(None, "estimate")
        >>> c.spare = True
        >>> c.count([c.placeholder(32)])
        [36]
        """
        n += n // 16 + 2 if self.spare else 0
        if self.tok is None:
            return "x" * (CHARS_PER_TOKEN * n)
        return " ".join([self.word] * n)


def _tokenizer(path: str) -> tuple[Any, str]:
    """A model's tokenizer, never its weights: from its folder, or a hub id's (the local cache
    first, then the hub unless ``HF_HUB_OFFLINE``); else None and why."""
    folder = Path(path)
    if folder.is_absolute() and not folder.exists():
        return None, f"{path} is not there yet (a GGUF file is converted on the first real run)"
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tries = [{"local_files_only": True}]
    if not folder.exists() and not os.environ.get("HF_HUB_OFFLINE"):
        tries.append({})
    why = ""
    for options in tries:
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **options)
        except Exception as err:  # many kinds (missing files, network, formats): only the why
            why = (str(err).strip().splitlines() or [type(err).__name__])[0]
            continue
        if getattr(tok, "chat_template", None) is None:
            return None, f"{path} has no chat template in its tokenizer"
        return tok, ""
    return None, f"no tokenizer for {path!r} ({why})"


class Counters:
    """One :class:`PromptCounter` per model name on one engine, each loaded once."""

    def __init__(self, backend: str):
        self.backend = backend
        self.loaded: dict[str, PromptCounter] = {}

    def __call__(self, name: str) -> PromptCounter:
        if name not in self.loaded:
            self.loaded[name] = PromptCounter.load(self.backend, name)
        return self.loaded[name]

    def of(self, model: ResolvedModel) -> PromptCounter:
        """The counter of a resolved model, known by its path."""
        if model.path not in self.loaded:
            self.loaded[model.path] = PromptCounter.of(model)
        return self.loaded[model.path]

    def how(self) -> dict[str, str]:
        """Per model name, how its prompt tokens were counted."""
        return {name: c.how for name, c in self.loaded.items()}


def model_of(counter: PromptCounter, name: str) -> ResolvedModel:
    """The model a run would record; a name that does not resolve stands for itself (its keys
    then match nothing, and the counter's ``how`` says why)."""
    return counter.model or ResolvedModel(name, name)


@dataclass(frozen=True)
class Need:
    """The most one input asks of one model: a step's prompt tokens plus what it generates (one
    option token where it scores), the largest over its steps."""

    tokens: int
    prompt: int
    step: str


@dataclass
class Step:
    calls: int = 0  # prompts still to send
    prompt_tokens: int = 0
    max_new_tokens: int = 0  # generated tokens at most
    done: int = 0  # calls already in the run directory


@dataclass
class Tally:
    """Calls, prompt tokens and generated-token ceilings per step of a stage."""

    steps: dict[str, Step] = field(default_factory=dict)
    # (counter, input id) -> the most that input asks of that counter's model
    needs: dict[tuple[PromptCounter, str], Need] = field(default_factory=dict)

    def add(
        self,
        step: str,
        counter: PromptCounter,
        prompts: Sequence[Chat | str],
        new_tokens: int = 0,
        samples: int = 1,
        owners: Sequence[str] | None = None,
    ) -> None:
        """Calls still to make: ``prompts``, each writing ``samples`` x ``new_tokens`` at most;
        ``owners``, the id of the input each prompt is for, to keep each input's :class:`Need`."""
        s = self.steps.setdefault(step, Step())
        counts = counter.count(prompts)
        s.calls += len(prompts)
        s.prompt_tokens += sum(counts)
        s.max_new_tokens += len(prompts) * samples * new_tokens
        for owner, n in zip(owners or (), counts):
            need = Need(n + max(new_tokens, 1), n, step)
            old = self.needs.get((counter, owner))
            if old is None or need.tokens > old.tokens:
                self.needs[counter, owner] = need

    def need(self, counter: PromptCounter, owner: str) -> Need | None:
        return self.needs.get((counter, owner))

    def done(self, step: str, calls: int) -> None:
        self.steps.setdefault(step, Step()).done += calls

    def figures(self) -> dict[str, Any]:
        """What a plan reports: calls left per step and in all, the calls already made, prompt
        tokens (per step and in all) and the generated-token ceiling."""
        steps = self.steps.items()
        return {
            "model_calls": {k: s.calls for k, s in steps},
            "calls": sum(s.calls for _, s in steps),
            "calls_done": {k: s.done for k, s in steps},
            "prompt_tokens": sum(s.prompt_tokens for _, s in steps),
            "prompt_tokens_by_step": {k: s.prompt_tokens for k, s in steps},
            "max_new_tokens_total": sum(s.max_new_tokens for _, s in steps),
        }


def logged(out: Path, name: str) -> list[dict[str, Any]]:
    """The records of a run directory's log, read without writing anything (no lock, no repair)."""
    return list(JsonlLog(Path(out) / name).read(repair=False))


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse, as the run would, a directory that holds a run with other settings."""
    from ..store import RunDir

    RunDir(out).check_settings(settings)
