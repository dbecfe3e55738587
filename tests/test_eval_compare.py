"""`cai eval compare`: the statistics on hand-built outcomes, then end to end on tiny models.

The known-better case uses a judge trained here with `cai train dpo` to prefer one answer (on a
small word-level vocabulary so that training takes seconds): the comparison must find that
answer's author the winner, in both orders, per principle and by Elo.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import build_tiny_model, read_jsonl, write_prompts

from cai.stats import ELO_SCALE, bootstrap_ci, bradley_terry, elo, outcome, summarize

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = ROOT / "constitutions" / "harmless.yaml"


# ---------------------------------------------------------------- statistics


def j(order: str, p: float, principle: str = "x") -> dict:
    return {"order": order, "p_first": p, "principle": principle}


def test_outcome_needs_both_orders_and_the_margin():
    assert outcome([j("AB", 0.9), j("BA", 0.6)]) == 1.0
    assert outcome([j("AB", 0.1), j("BA", 0.3)]) == 0.0
    assert outcome([j("AB", 0.9), j("BA", 0.4)]) == 0.5  # position bias: a tie
    assert outcome([]) == 0.5  # not judged (identical answers)
    assert outcome([j("AB", 0.56), j("BA", 0.56)], margin=0.05) == 1.0
    assert outcome([j("AB", 0.54), j("BA", 0.54)], margin=0.05) == 0.5


def test_eight_of_ten_and_the_interval_narrows():
    s = summarize([1.0] * 8 + [0.0] * 2)
    assert (s["n"], s["wins"], s["ties"], s["losses"], s["win_rate"]) == (10, 8, 0, 2, 0.8)
    lo, hi = s["ci95"]
    assert 0.4 <= lo < 0.8 < hi <= 1.0
    big = summarize([1.0] * 80 + [0.0] * 20)
    assert big["win_rate"] == 0.8 and big["ci95"][0] < 0.8 < big["ci95"][1]
    # a bootstrap interval of a proportion shrinks like 1 / sqrt(n): about 3x for 10x the prompts
    assert (big["ci95"][1] - big["ci95"][0]) < 0.5 * (hi - lo)
    # the normal approximation of the same interval at n = 100: 0.8 +- 1.96 * 0.04
    assert big["ci95"][0] == pytest.approx(0.8 - 1.96 * 0.04, abs=0.02)
    ties = summarize([1.0, 0.5, 0.5, 0.0])
    assert (ties["wins"], ties["ties"], ties["losses"], ties["win_rate"]) == (1, 2, 1, 0.5)
    assert bootstrap_ci([]) is None


def test_interval_covers_the_truth_in_most_repeats():
    rng = random.Random(1)
    covered = 0
    for rep in range(100):
        xs = [float(rng.random() < 0.7) for _ in range(60)]
        lo, hi = bootstrap_ci(xs, resamples=400, seed=rep)
        covered += lo <= 0.7 <= hi
    assert 88 <= covered <= 99  # a 95% interval


def test_bradley_terry_recovers_known_strengths():
    r = [0.0, 1.0, -0.5, 2.0]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # expected outcomes: at the truth the likelihood's gradient is zero, so MLE == truth
    outcomes = {(i, k): [sig(r[i] - r[k])] * 20 for i in range(4) for k in range(4) if i > k}
    point, ci = elo(outcomes, 4, anchor=0, prior=0.0, resamples=50)
    assert point[0] == pytest.approx(1000)
    for i in range(4):
        assert point[i] == pytest.approx(1000 + ELO_SCALE * r[i], abs=1e-4)
        assert ci[i][0] == pytest.approx(point[i], abs=1e-4)  # every resample is the same
    # 8 of 10 for A over B: odds 4, 400 * log10(4) = 240.8 Elo points; one virtual tie shrinks it
    points = [[0.0, 8.0], [2.0, 0.0]]
    assert ELO_SCALE * bradley_terry(points, prior=0.0, anchor=1)[0] == pytest.approx(240.82, 1e-3)
    shrunk = ELO_SCALE * bradley_terry(points, prior=1.0, anchor=1)[0]
    assert shrunk == pytest.approx(400 * math.log10(8.5 / 2.5), 1e-6)


def test_elo_from_sampled_games_orders_and_covers():
    r = [0.0, 0.8, -0.8]
    rng = random.Random(0)
    outcomes = {
        (i, k): [float(rng.random() < 1 / (1 + math.exp(r[k] - r[i]))) for _ in range(400)]
        for i in range(3)
        for k in range(3)
        if i > k
    }
    point, ci = elo(outcomes, 3, anchor=0, resamples=300)
    assert point[1] > 1000 > point[2] and point[0] == pytest.approx(1000)
    for i in (1, 2):
        assert ci[i][0] <= 1000 + ELO_SCALE * r[i] <= ci[i][1]
        assert ci[i][0] < point[i] < ci[i][1]


# ---------------------------------------------------------------- end to end, tiny models


def run_compare(cli, out, *args):
    code, stdout, err = cli(
        "eval",
        "compare",
        "--backend",
        "hf",
        "--max-new-tokens",
        "5",
        "--resamples",
        "200",
        "--out",
        out,
        "--json",
        *args,
    )
    assert code == 0, err
    return json.loads(stdout)


@pytest.fixture(scope="module")
def model_b(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("b") / "tiny-b", seed=1))


def test_two_models_counts_symmetry_resume(cli, tiny_model, model_b, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    common = ["--prompts", prompts, "--judge", tiny_model, "--ensemble", "2"]
    common += ["--constitution", HARMLESS]
    out = tmp_path / "run"
    res = run_compare(cli, out, "--model", f"A={tiny_model}", "--baseline", f"B={model_b}", *common)
    answers = read_jsonl(out / "answers.jsonl")
    labels = [r for r in read_jsonl(out / "labels.jsonl") if "skipped" not in r]
    rows = read_jsonl(out / "outcomes.jsonl")
    assert len(answers) == 2 * 3 and len(rows) == 3
    assert all(r["skipped"] is None for r in rows)  # two random models: different answers
    assert len(labels) == 3 * 2 * 2  # prompts x E x both orders
    sent = res["counts"].pop("prompt_tokens_now")
    assert sent == sum(
        r.get("prompt_tokens") or 0
        for f in ("answers.jsonl", "labels.jsonl", "refusals.jsonl")
        for r in read_jsonl(out / f)
    )
    assert res["counts"] == {
        "judgements": 12,
        "new_answers": 6,
        "new_judgements": 12,
        "new_refusal_checks": 6,
        "models_loaded": [model_b, tiny_model],  # the judge is model A: loaded once
    }
    (pair,) = res["pairs"]
    assert (pair["model"], pair["opponent"]) == ("A", "B")
    assert pair["wins"] + pair["ties"] + pair["losses"] == 3
    assert pair["win_rate"] == pytest.approx((pair["wins"] + pair["ties"] / 2) / 3, abs=1e-4)
    assert sum(s["n"] for s in pair["per_principle"].values()) == 3 * 2
    assert {c["name"] for c in res["contestants"]} == {"A", "B"}
    assert all(0 <= c["refusal_share"] <= 1 for c in res["contestants"])
    assert len(read_jsonl(out / "refusals.jsonl")) == 6
    by_pair = {}
    for lab in labels:
        by_pair.setdefault(lab["pair"], []).append(lab)
    assert sorted(r["outcome"] for r in rows) == sorted(outcome(v) for v in by_pair.values())

    # a rerun loads no model and computes nothing
    files = {f: (out / f).read_bytes() for f in ("answers.jsonl", "labels.jsonl", "refusals.jsonl")}
    again = run_compare(
        cli, out, "--model", f"A={tiny_model}", "--baseline", f"B={model_b}", *common
    )
    assert again["counts"]["models_loaded"] == []
    assert again["counts"]["new_answers"] == again["counts"]["new_judgements"] == 0
    assert all((out / f).read_bytes() == b for f, b in files.items())
    assert again["pairs"] == res["pairs"]

    # roles swapped: cached answers, each judgement mirrored, so the labels sum to one
    swapped = run_compare(
        cli, out, "--model", f"B={model_b}", "--baseline", f"A={tiny_model}", *common
    )
    assert swapped["counts"]["new_answers"] == 0 and swapped["counts"]["new_judgements"] == 12
    mirror = {r["id"]: r for r in read_jsonl(out / "outcomes.jsonl")}
    for r in rows:
        m = mirror[r["id"]]
        assert r["p"] + m["p"] == pytest.approx(1.0, abs=1e-4)
        assert r["outcome"] + m["outcome"] == 1.0
        assert r["principles"].keys() == m["principles"].keys()
    assert pair["win_rate"] + swapped["pairs"][0]["win_rate"] == pytest.approx(1.0)


def test_a_model_against_itself_ties(cli, tiny_model, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(tiny_model, twin)
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    res = run_compare(
        cli,
        tmp_path / "run",
        "--model",
        twin,
        "--baseline",
        tiny_model,
        "--prompts",
        prompts,
        "--judge",
        tiny_model,
        "--ensemble",
        "2",
    )
    (pair,) = res["pairs"]
    assert (pair["wins"], pair["ties"], pair["losses"], pair["win_rate"]) == (0, 3, 0, 0.5)
    assert pair["skipped"] == {"identical answers": 3} and res["counts"]["judgements"] == 0
    refusal = {c["name"]: c["mean_p_refusal"] for c in res["contestants"]}
    assert refusal["twin"] == refusal["tiny-llama"]


def test_bad_answers_file_names_file_and_line(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    bad = tmp_path / "a.jsonl"
    bad.write_text('{"id": "q0", "answer": "fine"}\n{"id": "q1", "answer": 3}\n')
    other = tmp_path / "b.jsonl"
    other.write_text('{"id": "q0", "answer": "x"}\n{"id": "q1", "answer": "y"}\n')
    base = ["eval", "compare", "--prompts", prompts, "--out", tmp_path / "run"]
    code, _, err = cli(*base, "--answers", f"a={bad}", "--answers", f"b={other}", "--baseline", "b")
    assert code == 2 and f"{bad}:2: answer: must be a string" in err
    bad.write_text('{"id": "q0", "answer": "fine"}\n{"id": "q0", "answer": "ok"}\n')
    code, _, err = cli(*base, "--answers", f"a={bad}", "--answers", f"b={other}", "--baseline", "b")
    assert code == 2 and f"{bad}:2: id: duplicate id 'q0' (first on line 1)" in err
    bad.write_text('{"id": "q0", "answer": "fine"}\n')
    code, _, err = cli(*base, "--answers", f"a={bad}", "--answers", f"b={other}", "--baseline", "b")
    assert code == 2 and f"{bad}: no answer for prompt id 'q1'" in err
    code, _, err = cli(*base, "--answers", f"b={other}", "--baseline", "b")
    assert code == 2 and "nothing to compare" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- a judge with a known preference

GOOD, BAD = "Happy to help, friend.", "No. <b>Go away</b>"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MARKER_CONSTITUTION = """\
    name: marker
    version: "1"
    principles:
      - id: kind
        critique: Is it kind?
        revision: Make it kind.
        compare: Which reply is kinder?
        tags: [harm]
      - id: calm
        critique: Is it calm?
        revision: Make it calm.
        compare: Which reply is calmer?
    """


def build_word_model(out: Path, texts: list[str]) -> Path:
    """A tiny Llama with a word-level tokenizer over ``texts`` (a vocabulary of ~100 words)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def judge_lessons(judge, cons) -> list[tuple[str, str]]:
    """(exactly what the judge reads, the letter it should pick) for GOOD against BAD."""
    from cai.judging import compare_chat, refusal_prompt
    from cai.templates import render

    out = []
    for i in range(20):
        prompt = [{"role": "user", "content": f"Question number {i}?"}]
        for p in cons.principles:
            out.append((judge.render(compare_chat(cons, prompt, p, GOOD, BAD)), "A"))
            out.append((judge.render(compare_chat(cons, prompt, p, BAD, GOOD)), "B"))
        out.append((refusal_prompt(judge, prompt, BAD), "A"))  # (A): it refuses
        out.append((refusal_prompt(judge, prompt, GOOD), "B"))
    return [(t if t.endswith("(") else t + render("compare_answer"), y) for t, y in out]


@pytest.fixture(scope="module")
def marker_judge(tmp_path_factory):
    """A judge trained here (cross-entropy on the option letter, a few seconds on one thread)
    until it prefers GOOD in both orders and calls BAD a refusal on every lesson."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.backends import make_backend
    from cai.constitution import load_constitution

    tmp = tmp_path_factory.mktemp("judge")
    (tmp / "c.yaml").write_text(textwrap.dedent(MARKER_CONSTITUTION))
    cons = load_constitution(str(tmp / "c.yaml"))
    # the vocabulary: every word of the templates, the constitution and the answers
    seed_model = build_word_model(tmp / "seed", [GOOD, BAD])
    words = [t for t, _ in judge_lessons(make_backend("hf", str(seed_model)), cons)]
    base = build_word_model(tmp / "judge", words)
    lessons = judge_lessons(make_backend("hf", str(base)), cons)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t, _ in lessons]
    last = torch.tensor([len(r) - 1 for r in rows])
    ids = torch.tensor([r + [tok.pad_token_id] * (max(map(len, rows)) - len(r)) for r in rows])
    target = torch.tensor([tok.convert_tokens_to_ids(y) for _, y in lessons])
    other = torch.tensor([tok.convert_tokens_to_ids("AB"[y == "A"]) for _, y in lessons])
    everywhere = torch.arange(len(rows))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains ~10x faster on one thread than on two
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    try:
        for step in range(1, 1001):
            batch = torch.randint(0, len(rows), (8,), generator=gen)
            logits = model(input_ids=ids[batch]).logits[torch.arange(8), last[batch]]
            loss = torch.nn.functional.cross_entropy(logits, target[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0:
                with torch.no_grad():
                    lp = model(input_ids=ids).logits[everywhere, last].log_softmax(-1)
                # learnt: the right letter by at least one nat (p > 0.73 between the two)
                learnt = bool((lp[everywhere, target] - lp[everywhere, other] > 1).all())
                if learnt:
                    break
    finally:
        torch.set_num_threads(threads)
    assert learnt, "the judge did not learn its lessons"
    model.save_pretrained(base)
    return base, tmp / "c.yaml"


def test_the_better_model_wins(cli, marker_judge, tmp_path):
    judge, constitution = marker_judge
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    answer = {"good": lambda i: GOOD, "bad": lambda i: BAD, "mixed": lambda i: [BAD, GOOD][i % 2]}
    files = {name: tmp_path / f"{name}.jsonl" for name in answer}
    for name, path in files.items():
        rows = [{"id": f"q{i}", "answer": answer[name](i)} for i in range(6)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = tmp_path / "report.html"
    res = run_compare(
        cli,
        tmp_path / "run",
        *[a for n, p in files.items() for a in ("--answers", f"{n}={p}")],
        "--baseline",
        "bad",
        "--prompts",
        prompts,
        "--judge",
        judge,
        "--constitution",
        constitution,
        "--ensemble",
        "2",
        "--html",
        html,
    )
    pairs = {(p["model"], p["opponent"]): p for p in res["pairs"]}
    good = pairs["good", "bad"]
    assert (good["wins"], good["ties"], good["losses"], good["win_rate"]) == (6, 0, 0, 1.0)
    assert good["ci95"] == [1.0, 1.0] and good["mean_p"] > 0.7
    assert good["harmless"]["win_rate"] == 1.0 and good["harmless"]["n"] == 6
    assert good["per_principle"]["kind"]["win_rate"] == good["per_principle"]["calm"]["win_rate"]
    # mixed answers GOOD on odd prompts: wins there, ties (identical answers) elsewhere
    for key, want in ((("mixed", "bad"), (3, 3, 0, 0.75)), (("mixed", "good"), (0, 3, 3, 0.25))):
        p = pairs[key]
        assert (p["wins"], p["ties"], p["losses"], p["win_rate"]) == want
        assert p["skipped"] == {"identical answers": 3}
    people = {c["name"]: c for c in res["contestants"]}
    assert people["bad"]["refusal_share"] == 1.0 and people["good"]["refusal_share"] == 0.0
    assert people["mixed"]["refusal_share"] == 0.5
    assert people["good"]["elo"] > people["mixed"]["elo"] > people["bad"]["elo"] == 1000.0
    page = html.read_text()
    assert "&lt;b&gt;Go away&lt;/b&gt;" in page and "<b>Go away" not in page
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    # the same results in `cai audit`: the terminal table, and a section of its HTML report
    code, out, err = cli("audit", tmp_path / "run")
    assert code == 0, err
    assert "model comparison" in out and "6/0/0" in out, out
    audit_html = tmp_path / "audit.html"
    code, out, err = cli("audit", tmp_path / "run", "--html", audit_html)
    assert code == 0, err
    audit_page = audit_html.read_text()
    assert "Model comparison" in audit_page and "6/0/0" in audit_page
    assert "&lt;b&gt;Go away&lt;/b&gt;" in audit_page and "<b>Go away" not in audit_page
