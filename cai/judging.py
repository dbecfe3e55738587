"""Asking a judge model about answers: the comparison prompt, option scoring, the refusal question.

Shared by the preference stage, the RL reward and ``cai eval compare``, so all three ask the same
question the same way. The prompts come from templates in ``cai/prompts/``; a label is read from
the log-probs of the option tokens (:func:`score_options`), never parsed out of free text. This
module builds prompts and turns log-probs into probabilities; it does not call a backend, draw
principles, or store anything.
"""

from __future__ import annotations

import math

from .backends import Backend, Chat
from .constitution import Constitution, Principle
from .templates import render


def conversation_text(prompt: Chat) -> str:
    """The conversation as the judge reads it, one "Person:"/"Assistant:" turn per paragraph.

    >>> chat = [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Yo"}]
    >>> conversation_text(chat)
    'Person: Hi\\n\\nAssistant: Yo'
    """
    names = {"user": "Person", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m['role']]}: {m['content'].strip()}" for m in prompt)


def _compare_turn(prompt: Chat, question: str, a: str, b: str) -> dict[str, str]:
    content = render(
        "compare",
        conversation=conversation_text(prompt),
        question=question,
        response_a=a,
        response_b=b,
    )
    return {"role": "user", "content": content}


def compare_chat(
    constitution: Constitution, prompt: Chat, principle: Principle, a: str, b: str
) -> Chat:
    """The few-shot comparisons as earlier turns, then this comparison as the user's turn."""
    chat: Chat = []
    for ex in constitution.few_shot.compare:
        question = ex.question or constitution.principle(ex.principle or "").compare
        ex_prompt = (
            [{"role": "user", "content": ex.prompt}]
            if isinstance(ex.prompt, str)
            else [m.model_dump() for m in ex.prompt]
        )
        chat.append(_compare_turn(ex_prompt, question, ex.response_a, ex.response_b))
        chat.append({"role": "assistant", "content": f"{render('compare_answer')}{ex.answer})"})
    chat.append(_compare_turn(prompt, principle.compare, a, b))
    return chat


def refusal_prompt(judge: Backend, prompt: Chat, reply: str) -> str:
    """The judge's text asking whether ``reply`` refuses; option (A) means it does."""
    turn = render("refusal", conversation=conversation_text(prompt), reply=reply)
    return judge.render([{"role": "user", "content": turn}]) + render("compare_answer")


def answer_prompt(judge: Backend, chat: Chat) -> str:
    """The comparison ``chat`` as the judge's text, up to the option it is asked for."""
    return judge.render(chat) + render("compare_answer")


def cot_prompt(feedback: Backend, chat: Chat) -> str:
    """With ``cot``: the comparison, then the opening of the judge's written reasoning."""
    return feedback.render(chat) + render("compare_cot")


def cot_answer_prompt(text: str, reasoning: str) -> str:
    """With ``cot``: what the judge wrote after ``text``, then the opening of its answer, after
    which the options are scored."""
    return f"{text} {reasoning}{render('compare_cot_answer')}"


def score_options(
    logprobs: list[float], order: str, clamp: tuple[float, float] | None
) -> tuple[float, float]:
    """(P(option A), P(the pair's first answer is better)) from the two option log-probs.

    ``order`` is "AB" when the pair's first answer was shown as (A), "BA" when swapped; ``clamp``
    bounds P(A) to ``[lo, hi]``.

    >>> score_options([0.0, 0.0], "AB", None)
    (0.5, 0.5)
    >>> score_options([0.0, -1e9], "BA", (0.1, 0.9))
    (0.9, 0.09999999999999998)
    """
    la, lb = logprobs
    m = max(la, lb)
    p_a = math.exp(la - m) / (math.exp(la - m) + math.exp(lb - m))
    if clamp:
        p_a = min(max(p_a, clamp[0]), clamp[1])
    return p_a, p_a if order == "AB" else 1.0 - p_a
