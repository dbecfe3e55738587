"""A prompt longer than the model's context: refused before any work with its id and numbers, or
cut from the left with `--long-prompts truncate-left`, what was cut listed in the manifest.

The model is the tiny llama with its context cut to CONTEXT tokens in its config, and a small
constitution keeps every step's prompt short, so a long prompt is a few hundred tokens. The tiny
model never writes its end-of-turn token: every answer runs to --max-new-tokens, the worst case
the check plans for.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

import pytest
from conftest import build_tiny_model, critique_args, read_jsonl

CONTEXT = 320
NEW = 6
CONSTITUTION = """\
name: small
version: "1"
principles:
  - id: kind
    critique: Say where the answer was unkind.
    revision: Rewrite it kindly.
    compare: Which answer is kinder?
  - id: safe
    critique: Say where the answer was unsafe, and quote the unsafe words exactly.
    revision: Rewrite it safely.
    compare: Which answer is safer for everyone involved?
few_shot:
  critique:
    - prompt: Hi
      response: Go away.
      principle: kind
      critique: It was rude.
      revision: Hello! How can I help?
"""


def shrink(model: Path, context: int) -> Path:
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = context
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.fixture(scope="module")
def short_model(tmp_path_factory) -> str:
    """The tiny model with a context of CONTEXT tokens."""
    return str(shrink(build_tiny_model(tmp_path_factory.mktemp("short") / "short"), CONTEXT))


@pytest.fixture
def constitution(tmp_path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(CONSTITUTION)
    return path


LONG = " ".join(f"word{i % 50}" for i in range(150)) + " What next?"


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompts_file(tmp_path: Path, *long_ids: str) -> Path:
    rows = [{"id": "short", "prompt": "Question number one?"}]
    rows += [{"id": i, "prompt": LONG} for i in long_ids]
    rows += [{"id": "short2", "prompt": "Question number two?"}]
    return write_rows(tmp_path / "p.jsonl", rows)


def own_tokens(model: str, text: str) -> int:
    """A one-turn chat's tokens, as the engines count them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    chat = [{"role": "user", "content": text}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return len(tok(rendered, add_special_tokens=False)["input_ids"])


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def within_context(records: list[dict], new_tokens: int = 0) -> None:
    """Every call's prompt (and what it may write) fits the context."""
    assert records
    for r in records:
        assert r["prompt_tokens"] + new_tokens <= CONTEXT, r


def test_critiques_refuse_names_the_prompt_and_writes_nothing(
    cli, short_model, constitution, tmp_path
):
    out = tmp_path / "run"
    args = critique_args(short_model, prompts_file(tmp_path, "long"), out, NEW)
    args += ["--constitution", constitution]
    code, _, err = cli(*args)
    assert code == 2
    assert err.count("\n") == 1  # one line
    own = own_tokens(short_model, LONG)
    m = re.fullmatch(
        r"error: (\S+): prompt 'long' is ([\d,]+) tokens \(its longest step, revision, needs "
        r"([\d,]+) with --max-new-tokens 6\) but the model's context is 320; shorten it, lower "
        r"--max-new-tokens, or pass --long-prompts truncate-left\n",
        err,
    )
    assert m, err
    assert m[1].endswith("p.jsonl") and int(m[2].replace(",", "")) == own
    assert int(m[3].replace(",", "")) > own + 2 * NEW > CONTEXT
    assert not out.exists()

    # the plan says the same without loading the model
    code, stdout, err = cli(*args, "--dry-run")
    assert code == 0, err
    plan = json.loads(stdout[: stdout.index("\n}\n") + 2])["plan"]["long_prompts"]
    assert plan["context"] == {"the model": CONTEXT} and plan["too_long"] == 1
    assert [p["id"] for p in plan["first_too_long"]] == ["long"]

    # several: how many, and the first named
    args[args.index("--prompts") + 1] = str(prompts_file(tmp_path, "long-a", "long-b"))
    code, _, err = cli(*args)
    assert code == 2 and err.count("\n") == 1
    assert "2 prompts are too long for the model's context of 320 tokens" in err
    assert f"'long-a' ({own:,} tokens; its longest step, revision, needs" in err
    assert "'long-b'" in err and not out.exists()


def test_critiques_truncate_left_sends_what_fits(cli, short_model, constitution, tmp_path):
    out = tmp_path / "run"
    prompts = prompts_file(tmp_path, "long")
    args = critique_args(short_model, prompts, out, NEW, "--long-prompts", "truncate-left")
    args += ["--constitution", constitution]
    code, _, err = cli(*args)
    assert code == 0, err
    made = manifest(out)
    assert made["settings"]["long_prompts"] == "truncate-left"
    report = made["long_prompts"]
    assert report["choice"] == "truncate-left" and report["context"] == {"the model": CONTEXT}
    [cut] = report["truncated"]
    assert cut["id"] == "long" and cut["tokens"] == own_tokens(short_model, LONG)
    assert 0 < cut["cut"] < cut["tokens"]

    steps = read_jsonl(out / "steps.jsonl")
    within_context(steps, NEW)
    records = {r["id"]: r for r in read_jsonl(out / "critiques.jsonl")}
    assert records["short"]["prompt"] == [{"role": "user", "content": "Question number one?"}]
    assert records["short2"]["prompt"][0]["content"] == "Question number two?"
    sent = records["long"]["prompt"][0]["content"]
    assert LONG.endswith(sent) and len(sent) < len(LONG)  # the start of the text is cut
    longest = max(s["prompt_tokens"] for s in steps if s["unit"] == records["long"]["key"])
    assert longest + NEW > CONTEXT - 20  # cut to fit, not to nothing

    # the cut is the same every time: a rerun resumes with nothing to do
    code, _, err = cli(*args)
    assert code == 0, err
    assert manifest(out)["counts"]["model_calls_now"] == 0

    # the choice keys the run: the other one is refused on this directory
    args[args.index("truncate-left")] = "refuse"
    code, _, err = cli(*args)
    assert code == 2 and 'long_prompts "truncate-left" -> "refuse"' in err


def prefs_args(model, constitution, out, *extra) -> list:
    return [
        "generate",
        "preferences",
        "--constitution",
        constitution,
        "--policy",
        model,
        "--feedback",
        model,
        "--max-new-tokens",
        str(NEW),
        "--backend",
        "hf",
        "--ensemble",
        "2",
        "--out",
        out,
        *extra,
    ]


def test_preferences_truncate_left_and_refused_pairs(cli, short_model, constitution, tmp_path):
    out = tmp_path / "run"
    prompts = prompts_file(tmp_path, "long")
    args = prefs_args(short_model, constitution, out, "--prompts", prompts, "--cot")
    code, _, err = cli(*args, "--long-prompts", "truncate-left")
    assert code == 0, err
    assert [c["id"] for c in manifest(out)["long_prompts"]["truncated"]] == ["long"]
    within_context(read_jsonl(out / "samples.jsonl"), NEW)
    labels = [r for r in read_jsonl(out / "labels.jsonl") if "skipped" not in r]
    assert {r["pair_id"].split(":")[0] for r in labels} == {"short", "long", "short2"}
    for r in labels:  # the scoring call reads the reasoning call's prompt and what it wrote
        assert r["prompt_tokens"] <= 2 * CONTEXT

    # pairs given as they are: the judge's prompts are checked, the pairs file named
    pairs = write_rows(
        tmp_path / "pairs.jsonl",
        [
            {"id": "ok", "prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
            {"id": "big", "prompt": LONG, "chosen": "Yes.", "rejected": "No."},
        ],
    )
    out2 = tmp_path / "run2"
    args = prefs_args(short_model, constitution, out2, "--pairs", pairs)
    code, _, err = cli(*args)
    assert code == 2 and err.count("\n") == 1
    assert f"{pairs}: prompt 'big' is" in err and "(its longest step, judgements, needs" in err
    assert "--max-new-tokens" not in err  # scoring writes nothing
    assert not out2.exists()
    code, _, err = cli(*args, "--long-prompts", "truncate-left")
    assert code == 0, err
    assert [c["id"] for c in manifest(out2)["long_prompts"]["truncated"]] == ["big"]
    within_context(read_jsonl(out2 / "labels.jsonl"), 1)


def test_compare_truncate_left(cli, short_model, constitution, tmp_path):
    out = tmp_path / "run"
    prompts = prompts_file(tmp_path, "long")
    args = ["eval", "compare", "--backend", "hf", "--max-new-tokens", str(NEW), "--out", out]
    args += ["--prompts", prompts, "--judge", short_model, "--ensemble", "2", "--json"]
    args += ["--constitution", constitution, "--model", f"A={short_model}"]
    answers = write_rows(
        tmp_path / "b.jsonl",
        [{"id": i, "answer": "A short answer."} for i in ("short", "long", "short2")],
    )
    args += ["--answers", f"B={answers}", "--baseline", "B", "--resamples", "50"]
    code, _, err = cli(*args)
    assert code == 2 and "prompt 'long' is" in err and not out.exists()
    code, _, err = cli(*args, "--long-prompts", "truncate-left")
    assert code == 0, err
    made = manifest(out)
    assert made["settings"]["long_prompts"] == "truncate-left"
    assert [c["id"] for c in made["long_prompts"]["truncated"]] == ["long"]
    assert made["long_prompts"]["context"] == {"the judge": CONTEXT, "model A": CONTEXT}
    within_context(read_jsonl(out / "answers.jsonl"), NEW)
    within_context(read_jsonl(out / "labels.jsonl"), 1)
    within_context(read_jsonl(out / "refusals.jsonl"), 1)


def test_labeler_refuses_an_item_too_long(cli, short_model, constitution, tmp_path):
    data = write_rows(
        tmp_path / "eval.jsonl",
        [
            {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
            {"prompt": LONG, "chosen": "Yes.", "rejected": "No."},
        ],
    )
    args = ["eval", "labeler", "--data", data, "--model", short_model, "--backend", "hf"]
    code, _, err = cli(*args, "--constitution", constitution)
    assert code == 2 and err.count("\n") == 1
    assert f"{data}: pair 2 needs " in err and "but the model's context is 320" in err


# ---------------------------------------------------------------- the engines' context


class ModelList:
    """A real HTTP server answering GET /v1/models as vLLM's servers do."""

    def __init__(self, data: list[dict]):
        body = json.dumps({"object": "list", "data": data}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                ok = self.path == "/v1/models"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) if ok else 0))
                self.end_headers()
                if ok:
                    self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_engines_know_the_context(short_model):
    from cai.backends import context_length, make_backend
    from cai.backends.openai import OpenAIBackend

    assert make_backend("hf", short_model).context_length == CONTEXT
    assert context_length("hf", short_model) == CONTEXT
    assert context_length("vllm", short_model, {"max_model_len": 256}) == 256

    served = ModelList([{"id": "other", "max_model_len": 99}, {"id": "m", "max_model_len": 4096}])
    bare = ModelList([{"id": "m"}])  # a server that does not say
    try:
        both = OpenAIBackend("m", base_urls=[served.url, bare.url])
        assert both.context_length == 4096
        assert OpenAIBackend("m", base_urls=[bare.url]).context_length is None
        dead = ModelList([])
        dead.close()
        assert OpenAIBackend("m", base_urls=[dead.url]).context_length is None
        assert context_length("openai", "m", {"base_urls": [served.url]}) == 4096
    finally:
        served.close()
        bare.close()


@pytest.mark.vllm
def test_vllm_truncate_left_within_max_model_len(cli, vllm_tiny_model, constitution, tmp_path):
    out = tmp_path / "run"
    prompts = prompts_file(tmp_path, "long")
    args = critique_args(vllm_tiny_model, prompts, out, NEW, backend="vllm")
    args += ["--constitution", constitution, "--max-model-len", str(CONTEXT)]
    code, _, err = cli(*args, "--long-prompts", "truncate-left")
    assert code == 0, err
    made = manifest(out)
    assert made["long_prompts"]["context"] == {"the model": CONTEXT}
    assert [c["id"] for c in made["long_prompts"]["truncated"]] == ["long"]
    within_context(read_jsonl(out / "steps.jsonl"), NEW)
