"""RL-CAI preference labels: soft labels from option log-probs, both orders, over principles.

For every pair of answers to a prompt, E principles are drawn (seeded, by weight, from the pair's
key). For each principle the feedback model sees the conversation, the principle's comparison
question and the two answers as options (A) and (B), after the constitution's comparison
few-shot examples, and the assistant turn opens with "The answer is: (". The log-probs of the
tokens ``A`` and ``B`` give P(A) = e^a / (e^a + e^b). The same is done with the answers swapped;
the pair's label is the mean, over both orders and all E principles, of the probability that the
first answer is better, so position bias cancels. No text is parsed. The prompts and the option
scoring are :mod:`cai.judging`'s, shared with the RL reward and ``cai eval compare``.

With ``cot``, the model first writes its reasoning ("Let's think step by step:"), then the
options are scored after "So the answer is: ("; each probability is clamped to [lo, hi].

Pairs come from the policy (K samples per prompt, every pair of them) or from a file. Pairs with
identical or empty answers are recorded with a reason and skipped, never dropped silently.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..backends import Backend, Chat, Sampling
from ..constitution import Constitution
from ..errors import BackendUnavailable
from ..inputs import PromptItem
from ..judging import compare_chat, cot_answer_prompt, cot_prompt, score_options
from ..store import RunDir, key, write_jsonl_atomic
from ..templates import render
from . import Progress, silent

STAGE = "preferences"
ORDERS = ("AB", "BA")


@dataclass(frozen=True)
class Pair:
    id: str
    key: str
    prompt: tuple[tuple[str, str], ...]
    first: str
    second: str

    @property
    def chat(self) -> Chat:
        return [{"role": r, "content": c} for r, c in self.prompt]

    @property
    def draw_key(self) -> str:
        """Seeds the principle draw; the same for the pair in either order."""
        return key("draw", self.prompt, sorted((self.first, self.second)))

    def problem(self) -> str | None:
        if not self.first.strip() or not self.second.strip():
            return "empty answer"
        if self.first.strip() == self.second.strip():
            return "identical answers"
        return None


@dataclass(frozen=True)
class LabelSettings:
    feedback: str
    ensemble: int
    seed: int
    cot: bool = False
    clamp: tuple[float, float] | None = None
    cot_sampling: Sampling = field(default_factory=lambda: Sampling(max_new_tokens=128))
    feedback_id: str = ""  # the judge's fingerprint (cai.models.fingerprint)

    def as_dict(self) -> dict[str, Any]:
        return {
            "feedback": self.feedback,
            "feedback_id": self.feedback_id,
            "ensemble": self.ensemble,
            "seed": self.seed,
            "cot": self.cot,
            "clamp": list(self.clamp) if self.clamp else None,
            "cot_sampling": self.cot_sampling.as_dict() if self.cot else None,
        }


def sample_pairs(
    prompts: Sequence[PromptItem], samples: dict[str, list[str]], keys: Sequence[str]
) -> list[Pair]:
    """Every pair of the K samples of each prompt."""
    pairs = []
    for item, k in zip(prompts, keys):
        for i, j in itertools.combinations(range(len(samples[k])), 2):
            a, b = samples[k][i], samples[k][j]
            pairs.append(Pair(f"{item.id}:{i}-{j}", key(STAGE, k, i, j), item.messages, a, b))
    return pairs


def policy_samples(
    prompts: Sequence[PromptItem],
    policy: Backend,
    run: RunDir,
    k: int,
    sampling: Sampling,
    reporter=None,
) -> tuple[dict[str, list[str]], list[str]]:
    """K answers per prompt from the policy, resumable (``samples.jsonl``)."""
    log = run.log("samples.jsonl")
    keys = [
        key("samples", policy.model_label, sampling.as_dict(), k, it.messages, n)
        for n, it in enumerate(prompts)
    ]
    have = {r["key"]: r["samples"] for r in log.read()}
    todo = [(it, kk) for it, kk in zip(prompts, keys) if kk not in have]
    for c0 in range(0, len(todo), policy.chunk_size):
        chunk = todo[c0 : c0 + policy.chunk_size]
        params = Sampling(
            sampling.max_new_tokens,
            sampling.temperature,
            sampling.top_p,
            k,
            sampling.seed + c0,
            sampling.repetition_penalty,
        )
        try:
            outs = policy.generate(
                [it.chat for it, _ in chunk], params, reporter.advance if reporter else None
            )
        except BackendUnavailable as err:  # keep the prompts that did finish, then stop
            log.append(_sample_records(chunk, err.done, policy.model_label))
            raise
        recs = _sample_records(chunk, dict(enumerate(outs)), policy.model_label)
        log.append(recs)
        have.update({r["key"]: r["samples"] for r in recs})
    return have, keys


def _sample_records(chunk, outs: dict, model: str) -> list[dict]:
    return [
        {
            "key": kk,
            "id": it.id,
            "prompt": it.chat,
            "model": model,
            "samples": [c.text for c in outs[pos]],
            "finish_reasons": [c.finish_reason for c in outs[pos]],
        }
        for pos, (it, kk) in enumerate(chunk)
        if pos in outs
    ]


def judge_pairs(
    constitution: Constitution,
    pairs: Sequence[Pair],
    feedback: Backend,
    run: RunDir,
    settings: LabelSettings,
    reporter=None,
    min_margin: float = 0.0,
) -> dict[str, Any]:
    """Label every pair (resumable, ``labels.jsonl``); export ``preferences.jsonl``."""
    log = run.log("labels.jsonl")
    done = {r["key"] for r in log.read()}
    skipped = []
    jobs = []
    for pair in pairs:
        reason = pair.problem()
        if reason:
            skip_key = key(pair.key, "skip")
            if skip_key not in done:
                skipped.append(
                    {"key": skip_key, "pair": pair.key, "pair_id": pair.id, "skipped": reason}
                )
            continue
        for p in constitution.draw_many(settings.ensemble, settings.seed, pair.draw_key):
            for order in ORDERS:
                jk = key(pair.key, p.id, order, settings.as_dict(), constitution.hash)
                if jk not in done:
                    jobs.append((jk, pair, p, order))
    log.append(skipped)
    if reporter:
        reporter.start(len(jobs))
    step = max(1, feedback.chunk_size) if jobs else 1  # nothing to judge: the judge is not touched
    for c0 in range(0, len(jobs), step):
        log.append(_judge_chunk(constitution, jobs[c0 : c0 + step], feedback, settings, reporter))
    return export_preferences(run, pairs, min_margin)


def _judge_chunk(constitution, jobs, feedback: Backend, settings: LabelSettings, reporter) -> list:
    chats = []
    for _, pair, p, order in jobs:
        a, b = (pair.first, pair.second) if order == "AB" else (pair.second, pair.first)
        chats.append(compare_chat(constitution, pair.chat, p, a, b))
    reasoning: list[str | None] = [None] * len(jobs)
    if settings.cot:
        texts = [cot_prompt(feedback, c) for c in chats]
        outs = feedback.generate(texts, settings.cot_sampling)
        reasoning = [o[0].text for o in outs]
        prompts = [cot_answer_prompt(t, r) for t, r in zip(texts, reasoning)]
    else:
        prompts = [feedback.render(c) + render("compare_answer") for c in chats]
    logprobs = feedback.choice_logprobs(prompts, ["A", "B"])
    odd = {i for i, t in enumerate(prompts) if not feedback.splits_cleanly(t, ["A", "B"])}
    records = []
    for i, ((jk, pair, p, order), lp, why) in enumerate(zip(jobs, logprobs, reasoning)):
        p_a, p_first = score_options(lp, order, settings.clamp)
        # the option would merge with the text before it: its log-prob is not what the model reads
        flags = ["option token split"] if i in odd else []
        if settings.cot and not (why or "").strip():
            flags.append("empty reasoning")
        records.append(
            {
                "key": jk,
                "pair": pair.key,
                "pair_id": pair.id,
                "principle": p.id,
                "order": order,
                "p_a": p_a,
                "p_first": p_first,
                "logprobs": lp,
                "cot": why,
                "flags": flags,
                "model": feedback.model_label,
            }
        )
    if reporter:
        reporter.advance(len(jobs), 0)
    return records


def _binomial_p(k: int, n: int) -> float | None:
    """Two-sided exact binomial test of k successes in n against 1/2."""
    if n == 0:
        return None
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def aggregate(pair: Pair, judgements: list[dict[str, Any]]) -> dict[str, Any]:
    """One preference record from a pair's judgements (both orders, every principle)."""
    p1 = sum(j["p_first"] for j in judgements) / len(judgements)
    by_order = {o: [j["p_first"] for j in judgements if j["order"] == o] for o in ORDERS}
    means = {o: sum(v) / len(v) for o, v in by_order.items() if v}
    consistent = len(means) == 2 and (means["AB"] - 0.5) * (means["BA"] - 0.5) > 0
    per_principle: dict[str, list[float]] = {}
    for j in judgements:
        per_principle.setdefault(j["principle"], []).append(j["p_first"])
    votes = [sum(v) / len(v) > 0.5 for v in per_principle.values()]
    first_wins = p1 >= 0.5
    chosen, rejected = (pair.first, pair.second) if first_wins else (pair.second, pair.first)
    return {
        "id": pair.id,
        "key": pair.key,
        "prompt": pair.chat,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p1 if first_wins else 1.0 - p1,
        "margin": abs(2 * p1 - 1),
        "principles": list(per_principle),
        "position_consistent": consistent,
        "principle_agreement": sum(v == first_wins for v in votes) / len(votes),
        "judgements": len(judgements),
        "chosen_longer": len(chosen) > len(rejected) if len(chosen) != len(rejected) else None,
    }


def export_preferences(run: RunDir, pairs: Sequence[Pair], min_margin: float = 0.0) -> dict:
    """Write ``preferences.jsonl`` (TRL conversational preference format) and return a summary."""
    labels: dict[str, list[dict[str, Any]]] = {}
    skipped: Counter = Counter()
    flags: Counter = Counter()
    for rec in run.log("labels.jsonl").read():
        if "skipped" in rec:
            skipped[rec["skipped"]] += 1
            continue
        labels.setdefault(rec["pair"], []).append(rec)
        flags.update(rec.get("flags") or [])
    rows = []
    for pair in pairs:
        js = labels.get(pair.key)
        if js:
            rows.append(aggregate(pair, js))
    kept = [r for r in rows if r["margin"] >= min_margin]
    write_jsonl_atomic(run.path / "preferences.jsonl", kept)
    return {
        "pairs": len(pairs),
        "labelled": len(rows),
        "kept": len(kept),
        "below_min_margin": len(rows) - len(kept),
        "skipped": dict(skipped),
        "flags": dict(flags),
        **label_summary(rows),
    }


def label_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Biases and agreement over preference records (:func:`aggregate` rows); None when empty.

    ``position_consistency``: share of pairs whose label points the same way in both orders;
    ``longer_chosen_share``: share of pairs of unequal length where the longer answer won, with
    the two-sided binomial p-value against 1/2.
    """
    n = len(rows)
    longer = [r["chosen_longer"] for r in rows if r["chosen_longer"] is not None]

    def mean(values) -> float | None:
        return round(sum(values) / n, 4) if n else None

    return {
        "position_consistency": mean(r["position_consistent"] for r in rows),
        "mean_abs_p_minus_half": mean(abs(r["p_chosen"] - 0.5) for r in rows),
        "principle_agreement": mean(r["principle_agreement"] for r in rows),
        "longer_chosen_share": round(sum(longer) / len(longer), 4) if longer else None,
        "longer_chosen_p_value": _binomial_p(sum(longer), len(longer)),
    }


def run_preferences(cfg, progress: Progress = silent) -> dict[str, Any]:
    """The RL-CAI stage as a run: ``cfg`` is a :class:`cai.config.PreferenceConfig`. Samples K
    answers per prompt from the policy (or reads ``cfg.pairs``), then labels every pair;
    checks every input before a model loads, refuses a directory holding another run, resumes
    its own, keeps the manifest. The policy engine is closed before judging when it is not the
    judge. Returns the summary of :func:`judge_pairs`."""
    from ..backends import engine_record, make_backend
    from ..constitution import load_constitution
    from ..inputs import load_pairs, load_prompts
    from ..models import resolve_for
    from ..store import tracked

    chosen, options = cfg.engine()
    cons = load_constitution(cfg.constitution)
    items: list[PromptItem] = []
    if cfg.pairs is not None:
        rows = load_pairs(cfg.pairs)[: cfg.limit]
        pairs = [Pair(i, key("pair", m, a, b), m, a, b) for i, m, a, b in rows]
    else:
        items = load_prompts(cfg.prompts, cfg.limit)
    judge = resolve_for(chosen, cfg.feedback)
    policy = None if cfg.pairs else resolve_for(chosen, cfg.policy)
    settings = LabelSettings(
        feedback=judge.label,
        feedback_id=judge.fingerprint(),
        ensemble=cfg.ensemble,
        seed=cfg.seed,
        cot=cfg.cot,
        clamp=cfg.bounds(),
        cot_sampling=Sampling(max_new_tokens=cfg.max_new_tokens),
    )
    sampling = Sampling(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
    )
    run_settings = {
        "stage": STAGE,
        **settings.as_dict(),
        "constitution_hash": cons.hash,
        "policy": policy and policy.label,
        "policy_id": policy and policy.fingerprint(),
        "samples": None if cfg.pairs else cfg.samples,
        "sampling": None if cfg.pairs else sampling.as_dict(),
    }
    with RunDir(cfg.out) as run:
        run.check_settings(run_settings)
        judge_engine = make_backend(chosen, cfg.feedback, **options)
        info = {"constitution": cons.info(), "prompts": cfg.pairs or cfg.prompts}
        with tracked(run, run_settings, **info, **engine_record(judge_engine)) as manifest:
            if policy is not None:
                same = policy.path == judge.path
                engine = judge_engine if same else make_backend(chosen, cfg.policy, **options)
                bar = progress("policy samples")
                bar.start(len(items))
                try:
                    answers, keys = policy_samples(items, engine, run, cfg.samples, sampling, bar)
                finally:
                    bar.stop()
                if engine is not judge_engine and hasattr(engine, "close"):
                    engine.close()  # its memory goes back before the judging
                pairs = sample_pairs(items, answers, keys)
            bar = progress("judgements")
            try:
                summary = judge_pairs(cons, pairs, judge_engine, run, settings, bar, cfg.min_margin)
            finally:
                bar.stop()
            manifest["counts"] = summary
            if hasattr(judge_engine, "stats"):
                manifest["servers"] = judge_engine.stats()
    return summary
