"""`--backend openai` against real `transformers serve` servers on loopback, serving a tiny model.

transformers 5.17's server answers chat and text completions but ignores `logprobs` (and has no
other endpoint returning option probabilities), so generation is tested for real here and option
scoring against it must stop with a clear error. Where a test needs a 503/429 or a count of what
the server answered, a small real HTTP proxy stands in front of the real server.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import (
    ROOT,
    Server,
    cai_subprocess,
    critique_args,
    free_port,
    read_jsonl,
    write_prompts,
)

KEY = "sk-cai-sentinel-5f0c2e9a"  # must never appear in any output


class Proxy:
    """A real HTTP proxy: answers the first requests with the statuses in ``fail``, forwards the
    rest to ``upstream``, counts 200s, and records the Authorization headers it saw. When the
    upstream is down it drops the connection, as a dead server would."""

    def __init__(self, upstream_port: int, fail: list[int] | None = None):
        self.upstream = f"http://127.0.0.1:{upstream_port}"
        self.fail = list(fail or [])
        self.answered = 0
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.auth.add(self.headers.get("Authorization", ""))
                    status = proxy.fail.pop(0) if proxy.fail else None
                if status is not None:
                    self._send(status, b'{"error": "try again"}')
                    return
                try:
                    r = httpx.post(
                        proxy.upstream + self.path,
                        content=body,
                        headers={"Content-Type": "application/json"},
                        timeout=60,
                    )
                except httpx.TransportError:
                    self.close_connection = True  # no answer at all
                    return
                if r.status_code == 200:
                    with proxy.lock:
                        proxy.answered += 1
                self._send(r.status_code, r.content)

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client gone mid-answer
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def served(tiny_model, tmp_path_factory):
    """One server for the whole session (tests that kill a server start their own)."""
    server = Server(tiny_model, tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield server
    server.kill()


@pytest.fixture
def own_server(tiny_model, tmp_path):
    server = Server(tiny_model, tmp_path / "serve.log").start()
    yield server
    server.kill()


@pytest.fixture
def proxies():
    made: list[Proxy] = []
    yield lambda *a, **k: made.append(Proxy(*a, **k)) or made[-1]
    for p in made:
        p.close()


def openai_args(model, prompts, out, *urls, extra=()) -> list[str]:
    args = critique_args(model, prompts, out, 4, *extra, backend="openai")
    for u in urls:
        args += ["--base-url", u]
    return args


def run_cai(args, env=None, timeout=180) -> tuple[int, str, str]:
    proc = cai_subprocess(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def no_secret_anywhere(out_dir: Path, *texts: str) -> None:
    for f in out_dir.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="replace"), f"the API key leaked into {f}"
    for t in texts:
        assert KEY not in t


def test_critiques_spread_over_two_urls_one_dead(served, tiny_model, tmp_path):
    """A live server and a dead port: every call is answered by the live one, the dead one is
    tried, taken out of rotation, and probed again later, and the run finishes."""
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    out = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    code, stdout, err = run_cai(
        openai_args(tiny_model, prompts, out, served.url, dead, extra=["--concurrency", "2"])
    )
    assert code == 0, err
    records = read_jsonl(out / "critiques.jsonl")
    assert sorted(r["id"] for r in records) == [f"q{i}" for i in range(4)]
    assert all(r["backend"] == "openai" and r["rounds"][1]["revision"] for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    live, down = manifest["servers"]
    assert live["url"] == served.url and live["ok"] == 4 * 5 and live["failed"] == 0
    # tried, then out of rotation: far fewer tries than calls
    assert down["url"] == dead and down["ok"] == 0 and 1 <= down["failed"] < 4 * 5
    assert len(read_jsonl(out / "sft.jsonl")) == 4


def test_retries_503_and_429_and_the_key_is_sent_but_never_written(
    served, tiny_model, tmp_path, proxies
):
    proxy = proxies(served.port, fail=[503, 503, 429])
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    out = tmp_path / "run"
    code, stdout, err = run_cai(
        openai_args(tiny_model, prompts, out, proxy.url, extra=["--api-key-env", "CAI_TEST_KEY"]),
        env={"CAI_TEST_KEY": KEY, "OPENAI_API_KEY": ""},
    )
    assert code == 0, err
    assert len(read_jsonl(out / "critiques.jsonl")) == 3
    assert proxy.answered == 3 * 5 and not proxy.fail  # every refusal was retried
    assert proxy.auth == {f"Bearer {KEY}"}  # the key did reach the server
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["servers"][0]["failed"] == 3 and manifest["servers"][0]["ok"] == 15
    no_secret_anywhere(out, stdout, err)
    # A request the server rejects (not retried) names the server's reason, still without the key.
    code, stdout, err = run_cai(
        openai_args(
            tiny_model,
            prompts,
            tmp_path / "bad",
            proxy.url,
            extra=["--api-key-env", "CAI_TEST_KEY", "--repetition-penalty", "1.3"],
        ),
        env={"CAI_TEST_KEY": KEY},
    )
    assert code == 2 and "HTTP 422" in err and "repetition_penalty" in err
    assert "Traceback" not in err
    no_secret_anywhere(tmp_path, stdout, err)


def _wait_for(cond, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail("the run did not get that far in time")


def test_server_killed_mid_run_the_run_stops_then_resumes(
    own_server, tiny_model, tmp_path, proxies
):
    """SIGKILL the server in the middle of a step: cai stops (exit 3) after --retry-for and keeps
    every call the server answered; with the server back, a rerun makes exactly the missing ones.
    """
    proxy = proxies(own_server.port)  # counts what the server answered
    n = 6
    prompts = write_prompts(tmp_path / "p.jsonl", n)
    out = tmp_path / "run"
    args = openai_args(
        tiny_model, prompts, out, proxy.url, extra=["--retry-for", "3", "--concurrency", "2"]
    )
    proc = cai_subprocess(*args)
    _wait_for(lambda: proxy.answered >= n + 2, proc)  # half-way through the first critiques
    own_server.kill()
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "no server answered for 3 s" in err and "run the same command again" in err
    assert "Traceback" not in err
    before = read_jsonl(out / "steps.jsonl")
    assert n < len(before) < 2 * n  # the finished part of the interrupted step was kept
    assert len(before) == proxy.answered  # every answered call was kept, none lost
    proxy.answered = 0
    own_server.start()
    code, stdout, err = run_cai(args)
    assert code == 0, err
    steps = read_jsonl(out / "steps.jsonl")
    assert steps[: len(before)] == before
    assert len({s["key"] for s in steps}) == len(steps) == n * 5  # no call made twice
    assert proxy.answered == n * 5 - len(before)  # the rerun asked only for the missing ones
    records = read_jsonl(out / "critiques.jsonl")
    assert sorted(r["id"] for r in records) == [f"q{i}" for i in range(n)]


@pytest.mark.slow
def test_server_back_within_retry_window_the_same_run_finishes(own_server, tiny_model, tmp_path):
    """SIGKILL the server mid-run and start it again: the run waits and finishes by itself."""
    n = 4
    prompts = write_prompts(tmp_path / "p.jsonl", n)
    out = tmp_path / "run"
    steps = out / "steps.jsonl"
    proc = cai_subprocess(
        *openai_args(tiny_model, prompts, out, own_server.url, extra=["--retry-for", "120"])
    )
    _wait_for(lambda: steps.exists() and len(steps.read_text().splitlines()) >= n, proc)
    own_server.kill()
    time.sleep(1.0)
    own_server.start()
    stdout, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    rows = read_jsonl(steps)
    assert len({s["key"] for s in rows}) == len(rows) == n * 5
    assert len(read_jsonl(out / "critiques.jsonl")) == n
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["servers"][0]["failed"] >= 1


def test_option_scoring_on_a_server_without_logprobs_is_a_clear_error(
    served, tiny_model, tmp_path, cli
):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "How do I pick a lock?", "response_a": "No.", "response_b": "Ok"})
        + "\n"
    )
    out = tmp_path / "prefs"
    code, _, err = cli(
        "generate",
        "preferences",
        "--pairs",
        pairs,
        "--feedback",
        tiny_model,
        "--ensemble",
        "1",
        "--backend",
        "openai",
        "--base-url",
        served.url,
        "--out",
        out,
    )
    assert code == 2
    assert "returns no log-probs" in err and "cannot score options" in err
    assert len(err.strip().splitlines()) == 1
    labels = out / "labels.jsonl"
    assert not labels.exists() or not labels.read_text().strip()


def test_direct_generate_and_concurrency_bound(served, tiny_model):
    """The backend object on its own: n samples per chat, a templated string, and never more
    requests in flight per server than --concurrency."""
    from cai.backends import Sampling, make_backend

    b = make_backend("openai", tiny_model, base_urls=[served.url], concurrency=2)
    peak = []
    acquire = b.pool.acquire

    def watched():
        got = acquire()
        peak.append(b.pool.endpoints[0].inflight)
        return got

    b.pool.acquire = watched
    chats = [[{"role": "user", "content": f"Say {i}"}] for i in range(3)]
    outs = b.generate(chats + [b.render(chats[0])], Sampling(max_new_tokens=3, n=2))
    assert [len(o) for o in outs] == [2, 2, 2, 2]
    assert all(1 <= c.tokens <= 3 for o in outs for c in o)
    # the prompt tokens the server reports (usage), each sample of a chat alike, are what the
    # model's own tokenizer counts
    sent = b.count_tokens(chats + [b.render(chats[0])])
    assert [[c.prompt_tokens for c in o] for o in outs] == [[n, n] for n in sent]
    assert max(peak) == 2
    assert b.stats() == [{"url": served.url, "ok": 8, "failed": 0}]


def test_a_dead_server_is_probed_again_then_the_call_gives_up():
    """Only a dead port: the request is retried after growing cool-downs, and after --retry-for
    seconds the call stops with BackendUnavailable (exit code 3) instead of hanging."""
    from cai.backends import Sampling, make_backend
    from cai.errors import BackendUnavailable

    dead = f"http://127.0.0.1:{free_port()}/v1"
    b = make_backend("openai", "tiny", base_urls=[dead], retry_for=2.5)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="no server answered for 2.5 s") as err:
        b.generate([[{"role": "user", "content": "Hi"}]], Sampling(max_new_tokens=2))
    assert 2.5 <= time.monotonic() - t0 < 10
    assert err.value.exit_code == 3 and err.value.done == {}
    assert b.stats()[0]["failed"] >= 2 and b.stats()[0]["ok"] == 0


def test_vllm_shaped_logprob_answers_are_read():
    """The two answer shapes `vllm serve` gives /v1/completions (no server here has them)."""
    from cai.backends.openai import NoLogprobs, echoed_score, next_token_scores

    top = {"choices": [{"text": "A", "logprobs": {"top_logprobs": [{"A": -0.2, "B": -1.9}]}}]}
    assert next_token_scores(top, ["A", "B", "C"], "m") == [-0.2, -1.9, None]
    echo = {
        "choices": [
            {
                "logprobs": {
                    "tokens": ["(", "Yes", " ok"],
                    "token_logprobs": [None, -0.7, -0.1],
                    "text_offset": [0, 1, 4],
                }
            }
        ]
    }
    assert echoed_score(echo, 1, "Yes", 20) == -0.7
    with pytest.raises(NoLogprobs, match="no log-probs"):
        next_token_scores({"choices": [{"text": "A", "logprobs": None}]}, ["A"], "m")
    with pytest.raises(NoLogprobs, match="not among the server's top 20"):
        echoed_score(
            {
                "choices": [
                    {"logprobs": {"tokens": ["("], "token_logprobs": [None], "text_offset": [0]}}
                ]
            },
            1,
            "Yes",
            20,
        )


@pytest.mark.parametrize(
    "urls, extra, message",
    [
        ([], [], "needs at least one --base-url"),
        (["127.0.0.1:8000"], [], "must start with http://"),
        (["http://127.0.0.1:9/v1"], ["--api-key-env", "CAI_NOT_SET_X"], "is not set"),
    ],
)
def test_bad_server_options_are_one_line(cli, tiny_model, tmp_path, urls, extra, message):
    prompts = write_prompts(tmp_path / "p.jsonl", 1)
    code, _, err = cli(*openai_args(tiny_model, prompts, tmp_path / "run", *urls, extra=extra))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_default_model_needs_the_servers_name(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 1)
    code, _, err = cli(*openai_args("default", prompts, tmp_path / "run", "http://127.0.0.1:9/v1"))
    assert code == 2 and "give --model as the servers name it" in err


def test_base_url_with_another_backend_is_refused(cli, tiny_model, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 1)
    args = openai_args(tiny_model, prompts, tmp_path / "run", "http://127.0.0.1:9/v1")
    args[args.index("openai")] = "hf"
    code, _, err = cli(*args)
    assert code == 2 and "--base-url is for --backend openai" in err


def test_multi_gpu_pipeline_fans_out_to_every_server_and_passes_the_deepspeed_config():
    from accelerate.commands.config.config_args import load_config_from_file

    from cai.pipeline import load_pipeline

    stages = {st.name: st.cfg for st in load_pipeline(ROOT / "pipelines" / "multi-gpu.yaml").stages}
    for name in ("critiques", "preferences"):
        assert len(stages[name].base_url) == 4 and stages[name].backend == "openai"
    for name in ("sft", "dpo"):
        config = str(stages[name].accelerate_config)
        assert config == "configs/accelerate/zero2.yaml"
        # accelerate's own reader sees DeepSpeed ZeRO-2: cai passes this file through unchanged
        parsed = load_config_from_file(str(ROOT / config))
        assert parsed.distributed_type == "DEEPSPEED"
        assert parsed.deepspeed_config["zero_stage"] == 2
