"""Prompts longer than a model's context, found before the first model call: refused, or cut
from the left (``--long-prompts refuse | truncate-left``).

An input's need on a model is the longest prompt any step of its stage sends that model for it,
plus what that step generates (``max_new_tokens``; one option token for a step that scores), as
the stage's planner builds those prompts (:mod:`cai.stages.plan`: answers not written yet at
their longest, with room for their text tokenizing longer when read back, principles not drawn
yet at their widest). An input is too long when its need passes the model's context.

Counting every step's prompt of every input would tokenize the few-shot block once per call, as
``--dry-run`` does; this check runs on every start, so each input is first bounded: its own
messages' tokens, plus the most any step adds to an input of the same roles with empty messages
(every principle tried), plus a few tokens per seam where its text meets the template's. Only the
inputs whose bound passes a context are counted exactly, so the check costs about one
tokenization of the inputs, plus a full count of those near or past the limit.

Cutting takes whole tokens (of the model that needs it) from the start of the last user turn,
never from the system prompt, other turns, the few-shot examples or the templates, and counts
again until every model's need fits. Does not handle: an input that does not fit with its last
user turn cut to nothing (refused, saying so), or a model whose context or tokenizer is unknown
(not checked; the report says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InputError
from .plan import Need, PromptCounter, Tally

Messages = tuple[tuple[str, str], ...]
SEAM = 4  # tokens a text may add where it meets the template's, beyond its own count
NAMED = 3  # inputs a refusal names


@dataclass
class Reader:
    """A model a stage sends the inputs to: what messages call it (``the model``, ``the
    judge``, ...), the counter of its tokenizer, and its context (None: unknown)."""

    role: str
    counter: PromptCounter
    context: int | None

    def unchecked(self) -> str | None:
        """Why this model's inputs cannot be checked, if they cannot."""
        if self.context is None:
            return "its context is unknown (an openai server that does not list max_model_len)"
        if not self.counter.exact:
            return f"no tokenizer to count with ({self.counter.how})"
        return None


class Stage(Protocol):
    """What the check asks of a stage: its models and its planner's prompts."""

    readers: list[Reader]

    def exact(self, inputs: Sequence[Any], which: Sequence[int], tally: Tally) -> None:
        """Add to ``tally`` every step prompt of ``inputs[i]`` for ``i`` in ``which``, owned by
        the input's id (``inputs`` is the whole list: keys and draws may depend on it)."""
        ...

    def probe(self, roles: tuple[str, ...], owner: str, tally: Tally) -> None:
        """Add to ``tally``, owned by ``owner``, every step prompt of an input with these roles
        and empty messages, under every principle a step may draw."""
        ...

    def extra(self, inputs: Sequence[Any], reader: Reader) -> list[int]:
        """Per input, the tokens of its own that a prompt holds beyond its messages (answers
        given with it), as ``reader`` counts them."""
        ...

    def with_messages(self, item: Any, messages: Messages) -> Any:
        """The input with other messages (its keys made from them)."""
        ...


@dataclass
class Over:
    """An input too long for a model: which model, and its need there."""

    reader: Reader
    need: Need

    @property
    def excess(self) -> int:
        return self.need.tokens - (self.reader.context or 0)


def fit(
    inputs: Sequence[Any], stage: Stage, choice: str, where: str, new_tokens: int
) -> tuple[list[Any], dict[str, Any]]:
    """The inputs as the stage should run them, and what the manifest records: every model's
    context, the choice, and the inputs cut (``id``, its ``tokens`` before, ``cut`` tokens).
    With ``refuse`` an input too long is an :class:`InputError` (``where``: the file named);
    ``new_tokens`` is the stage's ``--max-new-tokens``, named in the message."""
    report: dict[str, Any] = {
        "choice": choice,
        "context": {r.role: r.context for r in stage.readers},
        "truncated": [],
    }
    live = [r for r in stage.readers if r.unchecked() is None]
    skipped = {r.role: r.unchecked() for r in stage.readers if r.unchecked()}
    if skipped:
        report["not_checked"] = skipped
    items = list(inputs)
    if not live or not items:
        return items, report
    over = too_long(items, _suspects(items, stage, live), stage, live)
    if not over:
        return items, report
    if choice == "refuse":
        raise InputError(refusal(items, over, where, new_tokens))
    items, report["truncated"] = _cut(items, over, stage, live, where, new_tokens)
    return items, report


def _suspects(items: list[Any], stage: Stage, live: list[Reader]) -> list[int]:
    """The inputs whose bound (see the module docstring) passes some model's context."""
    shapes = {roles_of(x) for x in items}
    probes = Tally()
    for shape in shapes:
        stage.probe(shape, repr(shape), probes)
    texts = [c for x in items for _, c in x.messages]
    out: set[int] = set()
    for r in live:
        counts = iter(r.counter.count(texts))
        extra = stage.extra(items, r)
        for i, x in enumerate(items):
            own = sum(next(counts) for _ in x.messages)
            base = probes.need(r.counter, repr(roles_of(x)))
            if base is None:  # this model reads nothing of such inputs
                continue
            bound = own + extra[i] + base.tokens + SEAM * (len(x.messages) + 2)
            if bound > (r.context or 0):
                out.add(i)
    return sorted(out)


def too_long(
    items: list[Any], which: Sequence[int], stage: Stage, live: list[Reader]
) -> dict[int, Over]:
    """Of ``items[i]`` for ``i`` in ``which``, counted exactly, those too long for some model
    (the model it passes by the most)."""
    if not which:
        return {}
    tally = Tally()
    stage.exact(items, which, tally)
    out: dict[int, Over] = {}
    for i in which:
        for r in live:
            need = tally.need(r.counter, items[i].id)
            if need is None or need.tokens <= (r.context or 0):
                continue
            o = Over(r, need)
            if i not in out or o.excess > out[i].excess:
                out[i] = o
    return out


def roles_of(item: Any) -> tuple[str, ...]:
    return tuple(role for role, _ in item.messages)


def hollow(roles: Sequence[str]) -> list[dict[str, str]]:
    """A chat of these roles with empty messages: what a probe sends."""
    return [{"role": r, "content": ""} for r in roles]


def own_tokens(item: Any, counter: PromptCounter) -> int:
    """The input's tokens as a chat alone (what a model answering it reads)."""
    return counter.count([[{"role": r, "content": c} for r, c in item.messages]])[0]


def refusal(items: list[Any], over: dict[int, Over], where: str, new_tokens: int) -> str:
    """One line naming the inputs too long, their lengths, needs and the context, and the ways
    out."""
    found = sorted(over.items())
    writes = any(o.need.tokens - o.need.prompt > 1 for _, o in found)
    lower = ", lower --max-new-tokens" if writes else ""
    flag = f" with --max-new-tokens {new_tokens}" if writes else ""
    readers = {id(o.reader) for _, o in found}

    def step(o: Over) -> str:
        return f"its longest step, {o.need.step}, needs {o.need.tokens:,}"

    if len(found) == 1:
        i, o = found[0]
        own = own_tokens(items[i], o.reader.counter)
        return (
            f"{where}: prompt {items[i].id!r} is {own:,} tokens ({step(o)}{flag}) but "
            f"{o.reader.role}'s context is {o.reader.context:,}; shorten it{lower}, or pass "
            "--long-prompts truncate-left"
        )
    first = found[0][1].reader
    same = len(readers) == 1
    named = []
    for i, o in found[:NAMED]:
        own = own_tokens(items[i], o.reader.counter)
        of = "" if same else f" of {o.reader.role}'s {o.reader.context:,}"
        named.append(f"{items[i].id!r} ({own:,} tokens; {step(o)}{of})")
    more = f" and {len(found) - NAMED} more" if len(found) > NAMED else ""
    whose = f" {first.role}'s context of {first.context:,} tokens" if same else " the context"
    return (
        f"{where}: {len(found)} prompts are too long for{whose}{flag}: "
        f"{', '.join(named)}{more}; shorten them{lower}, or pass --long-prompts truncate-left"
    )


def last_user(messages: Messages) -> int | None:
    """Index of the last user turn, the one text ``truncate-left`` cuts."""
    found = [k for k, (role, _) in enumerate(messages) if role == "user"]
    return found[-1] if found else None


def cut_text(counter: PromptCounter, text: str, tokens: int) -> tuple[str, int]:
    """``text`` without its first ``tokens`` tokens, and how many it has: a piece of a
    character left at the start by the cut (bytes of a token split) and the space before the
    first word kept are dropped."""
    ids = counter.tok(text, add_special_tokens=False)["input_ids"]
    kept = counter.tok.decode(ids[tokens:], skip_special_tokens=False)
    return kept.lstrip("\ufffd").lstrip(), len(ids)


def _cut(
    items: list[Any],
    over: dict[int, Over],
    stage: Stage,
    live: list[Reader],
    where: str,
    new_tokens: int,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Cut each input in ``over`` until it fits every model; what was cut, in input order."""
    original = {i: items[i] for i in over}
    cutter = {i: o.reader for i, o in over.items()}  # whose tokens the cut is counted in
    cut = {i: 0 for i in over}
    pending = dict(over)
    for _ in range(8):  # a cut of the excess nearly always fits at once; the rest, next time
        failed = []
        for i, o in pending.items():
            x, k = original[i], last_user(original[i].messages)
            if k is None:
                failed.append(i)
                continue
            cut[i] += max(1, o.excess)
            text, length = cut_text(cutter[i].counter, x.messages[k][1], cut[i])
            if cut[i] >= length:
                failed.append(i)
                continue
            messages = x.messages[:k] + ((x.messages[k][0], text),) + x.messages[k + 1 :]
            items[i] = stage.with_messages(x, messages)
        if failed:
            raise InputError(_uncuttable(original[failed[0]], stage, live, where, new_tokens))
        pending = too_long(items, sorted(pending), stage, live)
        if not pending:
            break
    else:
        i = min(pending)
        raise InputError(_uncuttable(original[i], stage, live, where, new_tokens))
    done = [
        {
            "id": original[i].id,
            "tokens": own_tokens(original[i], cutter[i].counter),
            "cut": cut[i],
        }
        for i in sorted(over)
    ]
    return items, done


def _uncuttable(item: Any, stage: Stage, live: list[Reader], where: str, new_tokens: int) -> str:
    """Why ``item`` cannot fit even with its last user turn cut to nothing."""
    k = last_user(item.messages)
    if k is None:
        return (
            f"{where}: prompt {item.id!r} is too long for the model's context and has no user "
            "turn for --long-prompts truncate-left to cut; shorten it"
        )
    empty = item.messages[:k] + ((item.messages[k][0], ""),) + item.messages[k + 1 :]
    bare = stage.with_messages(item, empty)
    o = too_long([bare], [0], stage, live).get(0)
    if o is None:  # only the cutting's own rounding failed; say what is left plainly
        return (
            f"{where}: prompt {item.id!r} could not be cut to fit the model's context; shorten it"
        )
    writes = o.need.tokens - o.need.prompt > 1
    lower = f"lower --max-new-tokens (now {new_tokens})" if writes else "shorten its other turns"
    return (
        f"{where}: prompt {item.id!r} does not fit {o.reader.role}'s context of "
        f"{o.reader.context:,} tokens even with its last user turn cut to nothing (its longest "
        f"step, {o.need.step}, still needs {o.need.tokens:,}); {lower}"
    )


def planned(tally: Tally, readers: list[Reader], choice: str) -> dict[str, Any]:
    """What a plan says about long prompts: every model's context and the inputs of the work
    left that it does not fit (the first few, and how many)."""
    found: dict[str, dict[str, Any]] = {}  # by input, on the model it passes by the most
    for (counter, owner), need in tally.needs.items():
        for r in readers:
            if r.counter is not counter or r.unchecked() is not None:
                continue
            excess = need.tokens - (r.context or 0)
            if excess > 0 and excess > found.get(owner, {}).get("excess", 0):
                found[owner] = {"id": owner, "model": r.role, "needs": need.tokens}
                found[owner].update(step=need.step, excess=excess)
    first = [{k: v for k, v in f.items() if k != "excess"} for f in list(found.values())[:5]]
    out: dict[str, Any] = {
        "choice": choice,
        "context": {r.role: r.context for r in readers},
        "too_long": len(found),
        "first_too_long": first,
    }
    skipped = {r.role: r.unchecked() for r in readers if r.unchecked()}
    if skipped:
        out["not_checked"] = skipped
    return out


def engine_reader(role: str, engine: Any, model: Any) -> Reader:
    """The reader of a loaded engine: its context, and its own tokenizer to count with (a
    server's model: the tokenizer the planner loads for it, only when its context is known)."""
    context = engine.context_length
    tok = getattr(engine, "tok", None)
    if tok is not None:
        counter = PromptCounter(tok, f"the {engine.name} engine's tokenizer", model)
    elif context is not None:
        counter = PromptCounter.of(model)
    else:
        counter = PromptCounter(None, "not loaded: the context is unknown", model)
    counter.spare = True
    return Reader(role, counter, context)


def plan_reader(role: str, counter: PromptCounter, engine: str, options: dict) -> Reader:
    """The reader a plan reports on: the planner's counter, and the context read without
    loading the model (:func:`cai.backends.context_length`). A run that checks with it sets
    ``counter.spare``."""
    from ..backends import context_length

    context = None
    if counter.model is not None:
        context = context_length(engine, counter.model.path, options)
    return Reader(role, counter, context)
