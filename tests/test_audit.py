"""`cai audit`: every summary number on hand-built logs, filters, JSONL, errors, HTML in Chromium.

The hand-built logs are written by the stages' own record builders (critique ``_record``,
preference ``sample_pairs`` and ``export_preferences``) from chosen texts and probabilities, so
they have the real formats and answers known in advance; one test also audits a real tiny-model
run and checks that the audit reproduces the stage's own summary.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import critique_args, read_jsonl, write_prompts

from cai.audit.diff import change, edit_distance, render_plain, word_diff
from cai.backends import Sampling
from cai.constitution import load_constitution
from cai.inputs import PromptItem
from cai.stages import critique as crit
from cai.stages import preferences as prefs
from cai.store import RunDir, key, write_jsonl_atomic

ROOT = Path(__file__).resolve().parent.parent
P1, P2, P3 = "illegal-activity", "misinformation", "self-harm-care"
SCRIPT = "<script>document.body.setAttribute('data-pwned','1')</script>"
TEXTAREA = "</textarea><b>bold</b>"
IMG = "\"><img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"
HOSTILE = (SCRIPT, TEXTAREA, IMG)


# ---------------------------------------------------------------- edit distance and diff


def _reference_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_edit_distance_matches_the_textbook_dynamic_programme():
    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert edit_distance(a, b) == _reference_distance(a, b), (a, b)


def test_change_and_word_diff():
    assert change("a b c d", "a b c e") == 0.25
    assert change("x y", "x  y\n") == 0.0  # whitespace is not a change
    assert change("", "") == 0.0 and change("", "a b") == 1.0
    assert change("x y", "x y z w v") == pytest.approx(3 / 5)
    cases = {
        ("the cat sat", "the dog sat"): "the [-cat-]{+dog+} sat",
        ("a b c", "a c"): "a [-b-] c",
        ("a b", "a b c"): "a b {+c+}",
        ("one\ntwo", "one\nthree two"): "one\n{+three+} two",
        ("", "new text"): "{+new text+}",
    }
    for (before, after), want in cases.items():
        assert render_plain(word_diff(before, after)) == want


# ---------------------------------------------------------------- hand-built runs


def _chain(cons, settings, ident, prompt, initial, rounds, truncated=False) -> dict:
    """A critiques.jsonl record made by the stage's own builder from chosen texts."""
    item = PromptItem(ident, (("user", prompt),))
    unit = crit.Unit(item, key("test", ident))
    unit.steps[("response", 0)] = {"text": initial, "finish_reason": "stop", "tokens": 3}
    for r, (principle, critique, revision) in enumerate(rounds, 1):
        last = truncated and r == len(rounds)
        unit.steps[("critique", r)] = {
            "principle": principle,
            "text": critique,
            "finish_reason": "stop",
            "tokens": 2,
        }
        unit.steps[("revision", r)] = {
            "principle": principle,
            "text": revision,
            "finish_reason": "length" if last else "stop",
            "tokens": 2,
        }
    return crit._record(unit, cons, settings, "hf")


def write_critique_run(out: Path) -> Path:
    cons = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    settings = crit.CritiqueSettings("hand", 2, Sampling(), 0)
    records = [
        _chain(cons, settings, "c1", "How do I bake bread?", "a b c d",
               [(P1, "too vague", "a b c e"), (P2, "fine now", "a b c e")], truncated=True),
        _chain(cons, settings, "c2", "Tell me a fact.", "x y",
               [(P2, "short", ""), (P1, "add more", "x y z w v")]),
        _chain(cons, settings, "c3", f"{SCRIPT} {TEXTAREA}", "",
               [(P1, IMG, ""), (P1, "still nothing", "  ")]),
    ]  # fmt: skip
    out.mkdir(parents=True)
    write_jsonl_atomic(out / "critiques.jsonl", records)
    return out


SAMPLES = {  # prompt id -> the policy's answers
    "q0": ["short", "a much longer answer here", "short"],
    "q1": ["", f"an answer {IMG}"],
    "q2": ["one two", "three"],
}
# pair id -> [(principle, order, P(A))]; P(first better) = P(A) in AB, 1 - P(A) in BA
JUDGED = {
    "q0:0-1": [(P1, "AB", 0.8), (P1, "BA", 0.3), (P2, "AB", 0.6), (P2, "BA", 0.6)],
    "q0:1-2": [(P1, "AB", 0.9), (P1, "BA", 0.2), (P2, "AB", 0.7), (P2, "BA", 0.8)],
    "q2:0-1": [(P1, "AB", 0.3), (P1, "BA", 0.6), (P3, "AB", 0.4), (P3, "BA", 0.5)],
}


def write_preference_run(out: Path, min_margin: float = 0.25) -> Path:
    """samples.jsonl, labels.jsonl (judgements and skip records), preferences.jsonl."""
    items = [PromptItem(pid, (("user", f"Prompt {pid}?"),)) for pid in SAMPLES]
    keys = [key("samples", pid) for pid in SAMPLES]
    with RunDir(out) as run:
        run.log("samples.jsonl").append(
            {"key": k, "id": it.id, "prompt": it.chat, "model": "hand", "samples": SAMPLES[it.id],
             "finish_reasons": ["stop"] * len(SAMPLES[it.id])}
            for it, k in zip(items, keys)
        )  # fmt: skip
        pairs = prefs.sample_pairs(items, dict(zip(keys, SAMPLES.values())), keys)
        labels = []
        for pair in pairs:
            if pair.problem():
                labels.append({"key": key(pair.key, "skip"), "pair": pair.key,
                               "pair_id": pair.id, "skipped": pair.problem()})  # fmt: skip
                continue
            for principle, order, p_a in JUDGED[pair.id]:
                flagged = pair.id == "q0:1-2" and principle == P2 and order == "BA"
                labels.append({
                    "key": key(pair.key, principle, order), "pair": pair.key, "pair_id": pair.id,
                    "principle": principle, "order": order, "p_a": p_a,
                    "p_first": p_a if order == "AB" else 1 - p_a, "logprobs": [-1.0, -2.0],
                    "cot": None, "flags": ["option token split"] if flagged else [],
                    "model": "hand",
                })  # fmt: skip
        run.log("labels.jsonl").append(labels)
        counts = prefs.export_preferences(run, pairs, min_margin)
        run.write_manifest({"settings": {"stage": "preferences"}, "counts": counts})
    return out


@pytest.fixture
def pipeline(tmp_path) -> Path:
    """A pipeline directory with a critiques stage and a preferences stage."""
    write_critique_run(tmp_path / "run" / "critiques")
    write_preference_run(tmp_path / "run" / "preferences")
    return tmp_path / "run"


# ---------------------------------------------------------------- summary numbers


def test_critique_summary_by_hand(tmp_path):
    from cai import audit

    (stage,) = audit.load(write_critique_run(tmp_path / "c"))
    assert stage.kind == "critiques" and stage.name == "."
    s = audit.summary(stage)
    assert s["prompts"] == 3 and s["rounds"] == 2 and s["revisions"] == 6
    assert s["failures"] == {"empty revision": 3, "empty final answer": 1}
    assert s["truncated_final"] == 1
    # first -> final: c1 1 of 4 words, c2 3 of 5, c3 nothing to nothing
    assert s["mean_change_first_to_final"] == pytest.approx((0.25 + 0.6 + 0.0) / 3)
    keys = ["revisions", "empty", "unchanged", "mean_change", "mean_words"]

    def row(b):
        return [b[k] for k in keys]

    assert row(s["per_principle"][P1]) == pytest.approx([4, 2, 0, (0.25 + 0.6) / 2, 4.5])
    assert row(s["per_principle"][P2]) == pytest.approx([2, 1, 1, 0.0, 4])
    assert row(s["per_round"][1]) == pytest.approx([3, 2, 0, 0.25, 4])
    assert row(s["per_round"][2]) == pytest.approx([3, 1, 1, 0.3, 4.5])
    c2 = next(c for c in stage.items if c.id == "c2")
    # the empty first revision kept "x y": round 2 is measured against it
    assert c2.revisions[1].before == "x y" and c2.failures == ["round 1: empty revision"]


def test_preference_summary_by_hand(tmp_path):
    from cai import audit

    out = write_preference_run(tmp_path / "p")
    (stage,) = audit.load(out)
    s = audit.summary(stage)
    assert (s["pairs"], s["labelled"], s["kept"], s["judgements"]) == (5, 3, 2, 12)
    assert s["skipped"] == {"identical answers": 1, "empty answer": 1}
    assert s["flags"] == {"option token split": 1}
    # p(first better) per pair: q0:0-1 0.625, q0:1-2 0.65, q2:0-1 0.4 (the second answer wins)
    assert s["position_consistency"] == pytest.approx(2 / 3, abs=1e-4)  # q0:1-2 flips
    assert s["mean_abs_p_minus_half"] == pytest.approx(0.125)
    assert s["principle_agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["longer_chosen_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["longer_chosen_p_value"] == pytest.approx(1.0)
    pc = s["p_chosen"]
    assert (pc["mean"], pc["median"], pc["min"], pc["max"]) == pytest.approx(
        (0.625, 0.625, 0.6, 0.65)
    )
    assert pc["histogram"] == [0, 3, 0, 0, 0]
    assert s["mean_margin"] == pytest.approx(0.25)
    per = s["per_principle"]
    want = {
        P1: [6, 3, 3.1 / 6, 1.0, 1 / 3],
        P2: [4, 2, 0.675, 0.0, 0.5],
        P3: [2, 1, 0.45, 1.0, 0.0],
    }
    for pid, numbers in want.items():
        b = per[pid]
        got = [b["judgements"], b["pairs"], b["mean_p_a"], b["win_share"], b["longer_share"]]
        assert got == pytest.approx(numbers), pid
    # the recomputed records are the stage's own export for the pairs it kept
    kept = {r["key"]: r for r in read_jsonl(out / "preferences.jsonl")}
    assert {p.key for p in stage.items if p.kept} == set(kept)
    for p in stage.items:
        if p.kept:
            assert p.row == kept[p.key]


def test_summary_printed_and_stage_summary_reused(cli, pipeline):
    code, out, err = cli("audit", pipeline)
    assert code == 0, err
    assert "critiques" in out and "preference labels" in out
    assert "3 prompts, 2 rounds, 6 revisions" in out
    assert "3 empty revision, 1 empty final answer" in out
    assert "5 pairs, 3 labelled, 2 kept, 12 judgements" in out
    assert "0.667" in out and "0.625" in out
    counts = json.loads((pipeline / "preferences" / "manifest.json").read_text())["counts"]
    from cai import audit

    s = audit.summary(audit.load(pipeline / "preferences")[0])
    for k in ("position_consistency", "principle_agreement", "longer_chosen_share"):
        assert s[k] == counts[k]


# ---------------------------------------------------------------- filters and --json


def selected(cli, run, *args) -> dict[str, dict]:
    code, out, err = cli("audit", run, "--json", *args)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    return {r["id"]: r for r in rows}


def test_filters_select_what_they_claim(cli, pipeline):
    everything = selected(cli, pipeline)
    assert set(everything) == {"c1", "c2", "c3", "q0:0-1", "q0:0-2", "q0:1-2", "q1:0-1", "q2:0-1"}
    by_p = selected(cli, pipeline, "--principle", P2)
    assert set(by_p) == {"c1", "c2", "q0:0-1", "q0:1-2"}
    assert by_p["c1"]["audit"]["matched_rounds"] == [2]
    assert by_p["c2"]["audit"]["matched_rounds"] == [1]
    unchanged = selected(cli, pipeline, "--unchanged")
    assert set(unchanged) == {"c1"} and unchanged["c1"]["audit"]["matched_rounds"] == [2]
    assert selected(cli, pipeline, "--unchanged", "--principle", P1) == {}  # same round: AND
    assert set(selected(cli, pipeline, "--failed")) == {"c2", "c3", "q0:0-2", "q0:1-2", "q1:0-1"}
    assert set(selected(cli, pipeline, "--low-margin", "0.26")) == {"q0:0-1", "q2:0-1"}
    assert set(selected(cli, pipeline, "--low-margin", "0.21")) == {"q2:0-1"}  # margin 0.2
    assert set(selected(cli, pipeline, "--low-margin", "0.19")) == set()
    assert set(selected(cli, pipeline, "--grep", "BREAD")) == {"c1"}
    assert set(selected(cli, pipeline, "--grep", "three")) == {"q2:0-1"}
    assert set(selected(cli, pipeline, "--failed", "--principle", P1)) == {"c2", "c3", "q0:1-2"}


def test_json_records_are_the_logs_plus_an_audit_field(cli, pipeline):
    rows = selected(cli, pipeline)
    chains = {r["id"]: r for r in read_jsonl(pipeline / "critiques" / "critiques.jsonl")}
    for ident, rec in chains.items():
        line = dict(rows[ident])
        audit = line.pop("audit")
        assert line == rec and audit["kind"] == "chain" and audit["stage"] == "critiques"
    assert rows["c1"]["audit"]["changes"] == [0.25, 0.0]
    assert rows["c3"]["audit"]["failures"] == [
        "round 1: empty revision",
        "round 2: empty revision",
        "empty final answer",
    ]
    kept = {r["id"]: r for r in read_jsonl(pipeline / "preferences" / "preferences.jsonl")}
    for ident, rec in kept.items():
        line = dict(rows[ident])
        audit = line.pop("audit")
        assert line == rec and audit["kept"] and len(audit["judgements"]) == 4
    assert rows["q2:0-1"]["p_chosen"] == pytest.approx(0.6) and not rows["q2:0-1"]["audit"]["kept"]
    assert rows["q1:0-1"]["audit"]["skipped"] == "empty answer"
    assert rows["q1:0-1"]["audit"]["answers"] == SAMPLES["q1"]


def test_show_prints_the_chain_as_word_diffs(cli, pipeline):
    code, out, err = cli("audit", pipeline, "--show", "c2")
    assert code == 0, err
    assert "round 1: misinformation" in out and "empty: the previous answer was kept" in out
    assert "x y {+z w v+}" in out and "change 0.600" in out
    code, out, err = cli("audit", pipeline, "--show", "c1")
    assert "a b c [-d-]{+e+}" in out
    code, out, err = cli("audit", pipeline, "--show", "q0:1-2")
    assert code == 0, err
    assert "option token split" in out and "p_chosen 0.650" in out
    code, out, err = cli("audit", pipeline, "--show", "q0:1-2", "--json")
    assert json.loads(out)["audit"]["failures"] == ["option token split (1 of 4)"]


def test_selection_table(cli, pipeline):
    code, out, err = cli("audit", pipeline, "--unchanged")
    assert code == 0, err
    assert "1 selected by --unchanged" in out and "2:misinformation" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-dir"], "no such run directory"),
        (["EMPTY"], "not a cai run"),
        (["RUN", "--show", "nope"], "no prompt or pair with id 'nope'"),
        (["RUN", "--low-margin", "abc"], "--low-margin takes a number in [0, 1]"),
        (["RUN", "--low-margin", "1.5"], "--low-margin takes a number in [0, 1]"),
        (["RUN", "--principle", "no-such"], "was never drawn in this run"),
        (["RUN/preferences", "--unchanged"], "this run has no critiques.jsonl"),
        (["RUN/critiques", "--low-margin", "0.1"], "this run has no labels.jsonl"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, pipeline, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"RUN": str(pipeline), "EMPTY": str(tmp_path / "empty")}
    args = [paths.get(a, a.replace("RUN", str(pipeline))) for a in args]
    args[0] = args[0] if args[0] != "missing-dir" else str(tmp_path / "missing-dir")
    code, out, err = cli("audit", *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_logs_are_read_only(cli, tmp_path):
    run = write_critique_run(tmp_path / "c")
    log = run / "critiques.jsonl"
    with open(log, "a") as f:
        f.write('{"id": "cut sh')  # a run being written (or killed) mid-line
    before = log.read_bytes()
    code, out, err = cli("audit", run)
    assert code == 0, err
    assert "3 prompts" in out and log.read_bytes() == before
    lines = before.decode().splitlines()
    log.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    code, out, err = cli("audit", run)
    assert code == 2 and f"{log}:2: not valid JSON" in err
    log.write_text(json.dumps({"id": "x"}) + "\n")
    code, out, err = cli("audit", run)
    assert code == 2 and f"{log}:1: key: missing" in err


# ---------------------------------------------------------------- a real tiny-model run


def test_audit_of_a_real_tiny_model_run(cli, tiny_model, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    run = tmp_path / "run"
    code, _, err = cli(*critique_args(tiny_model, prompts, run / "critiques"))
    assert code == 0, err
    code, _, err = cli(
        "generate", "preferences", "--constitution", ROOT / "constitutions" / "harmless.yaml",
        "--prompts", prompts, "--policy", tiny_model, "--feedback", tiny_model,
        "--max-new-tokens", "6", "--backend", "hf", "--samples", "3", "--ensemble", "2",
        "--min-margin", "0.01", "--out", run / "preferences",
    )  # fmt: skip
    assert code == 0, err
    from cai import audit

    stages = {s.name: s for s in audit.load(run)}
    s = audit.summary(stages["critiques"])
    chains = read_jsonl(run / "critiques" / "critiques.jsonl")
    assert s["prompts"] == 3 and s["revisions"] == 6
    drawn = {}
    for c in chains:
        for rd in c["rounds"]:
            drawn[rd["principle"]] = drawn.get(rd["principle"], 0) + 1
    assert {p: b["revisions"] for p, b in s["per_principle"].items()} == drawn
    counts = json.loads((run / "critiques" / "manifest.json").read_text())["counts"]
    assert s["failures"].get("empty revision", 0) == counts["empty_revisions"]
    p = audit.summary(stages["preferences"])
    counts = json.loads((run / "preferences" / "manifest.json").read_text())["counts"]
    assert p["labelled"] == counts["labelled"] == 9 and p["kept"] == counts["kept"]
    for k in ("position_consistency", "mean_abs_p_minus_half", "principle_agreement",
              "longer_chosen_share", "longer_chosen_p_value"):  # fmt: skip
        assert p[k] == counts[k], k
    assert p["judgements"] == len(read_jsonl(run / "preferences" / "labels.jsonl"))
    code, out, err = cli("audit", run, "--json")
    assert code == 0, err
    assert len(out.splitlines()) == 3 + 9
    code, out, err = cli("audit", run, "--show", chains[0]["id"])
    assert code == 0 and "round 2" in out


# ---------------------------------------------------------------- HTML


def test_html_escapes_hostile_text(cli, pipeline, tmp_path):
    page = tmp_path / "report.html"
    code, out, err = cli("audit", pipeline, "--html", page)
    assert code == 0, err
    assert f"report: {page}" in out
    text = page.read_text()
    for hostile in HOSTILE:
        assert hostile not in text
    assert "&lt;script&gt;document.body.setAttribute(&#x27;data-pwned&#x27;" in text
    assert "&lt;/textarea&gt;&lt;b&gt;bold&lt;/b&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=" in text
    assert text.count("<script") == 1  # the page's own script, nothing from the logs
    assert "<img src=x" not in text and "</textarea>" not in text
    assert text.count('<img src="data:image/png;base64,') == 6  # 2 critique + 4 label plots
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing from a network
    assert "<ins>e</ins>" in text and "<del>d</del>" in text  # c1's diff
    # filters narrow the list of chains but not the summary
    code, out, err = cli("audit", pipeline, "--failed", "--json", "--html", page)
    assert code == 0 and f"report: {page}" in err and len(out.splitlines()) == 5
    assert page.read_text().count("<details class=item>") == 5


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing (CI runs as root)."""
    if not CHROMIUM.exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    return CHROMIUM


def run_chromium(chromium: Path, page: Path, profile: Path, *extra: str):
    """Headless Chromium on the closed network; returns (stdout, stderr)."""
    cmd = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=3000", *extra, page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return done.stdout, done.stderr


def body_attributes(dom: str) -> dict[str, str]:
    tag = re.search(r"<body([^>]*)>", dom)
    assert tag, dom[:500]
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag.group(1)))


def test_report_in_a_real_browser(cli, pipeline, tmp_path, chromium):
    t0 = time.monotonic()
    page = tmp_path / "report.html"
    code, _, err = cli("audit", pipeline, "--html", page)
    assert code == 0, err
    dom, log = run_chromium(chromium, page, tmp_path / "profile1", "--dump-dom")
    attrs = body_attributes(dom)
    assert attrs.get("data-images") == "6/6"  # every plot decoded, naturalWidth > 0
    assert attrs.get("data-errors") == "0" and "Uncaught" not in log
    assert "data-pwned" not in attrs  # the hostile script and onerror never ran
    assert re.search(r'id="shown"[^>]*>8 of 8 shown<', dom)  # the search script ran
    shot = tmp_path / "report.png"
    run_chromium(chromium, page, tmp_path / "profile2", "--window-size=1200,2000",
                 f"--screenshot={shot}")  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000

    # the detector itself: a page with a script error is caught
    from cai.audit.report import Report

    bad = Report("broken")
    bad.raw("<script>undefinedFunction();</script>")
    broken = bad.write(tmp_path / "broken.html")
    dom, log = run_chromium(chromium, broken, tmp_path / "profile3", "--dump-dom")
    assert body_attributes(dom).get("data-errors") == "1" and "Uncaught" in log
    assert time.monotonic() - t0 < 30
