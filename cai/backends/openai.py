"""Any OpenAI-compatible server (``vllm serve``, ``transformers serve``, ...), many at once.

Handles: generation through ``/v1/chat/completions`` (a chat) or ``/v1/completions`` (a prompt
already templated), one request per sample; requests spread over every base URL, least-loaded
first, at most ``concurrency`` in flight per server; retries with exponential back-off and jitter
on connection errors, timeouts, 429 and 5xx, where a server that fails is left out for a growing
cool-down and then probed with one request; option log-probs from ``/v1/completions`` (the top
log-probs of the next token, or the echoed prompt log-probs of ``prompt + option`` for an option
outside the top k). When no server has answered a request for ``retry_for`` seconds the call
stops with :class:`BackendUnavailable`, carrying the results that did finish so the stage can
keep them; a rerun resumes.

Does not handle: streaming, tool calls, or servers that return no log-probs (``choice_logprobs``
says so and stops; it never parses option letters out of generated text).

The API key is read from an environment variable and only ever sent in the ``Authorization``
header: it is not stored on the object's public fields, in records, manifests or messages.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..errors import BackendUnavailable, InputError
from . import Chat, Completion, Progress, Sampling
from .pool import Pool, public_url, retryable

TOP_LOGPROBS = 20  # vLLM's default --max-logprobs


class NoLogprobs(InputError):
    """The server answers, but returns no log-probs, so options cannot be scored."""


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_urls: Sequence[str],
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout: float = 300.0,
        retry_for: float = 300.0,
        chunk_size: int | None = None,
        tokenizer: str | None = None,
    ):
        import httpx

        if not base_urls:
            raise InputError(
                "--backend openai needs at least one --base-url (e.g. http://host:8000/v1)"
            )
        bad = [u for u in base_urls if not u.startswith(("http://", "https://"))]
        if bad:
            raise InputError(f"--base-url {bad[0]!r} must start with http:// or https://")
        if concurrency < 1 or retry_for <= 0 or timeout <= 0:
            raise InputError("--concurrency must be >= 1, --retry-for and --timeout > 0")
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise InputError(
                    f"--api-key-env {api_key_env}: that environment variable is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
            del key
        self.model_label = model
        self.model = model
        self.tokenizer_name = tokenizer or model
        self.pool = Pool(base_urls, concurrency)
        self.workers = concurrency * len(base_urls)
        self.chunk_size = chunk_size or max(64, 4 * self.workers)
        self.retry_for = retry_for
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=self.workers + len(base_urls)),
        )
        self._tok = None
        self._context: tuple[int | None] | None = None  # (figure,) once asked

    @property
    def context_length(self) -> int | None:
        """The model's ``max_model_len`` as the servers' ``/v1/models`` lists it (vLLM's servers
        do), the smallest where they differ; None when no server reports one. Asked once."""
        if self._context is None:
            found = [n for ep in self.pool.endpoints if (n := self._served_length(ep.url))]
            self._context = (min(found) if found else None,)
        return self._context[0]

    def _served_length(self, url: str) -> int | None:
        import httpx

        try:
            r = self.client.get(url + "/models", timeout=5.0)
            listed = r.json().get("data") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        for entry in listed if isinstance(listed, list) else []:
            if isinstance(entry, dict) and entry.get("id") == self.model:
                n = entry.get("max_model_len")
                return int(n) if isinstance(n, int) and n > 0 else None
        return None

    # ---------------------------------------------------------------- requests

    def stats(self) -> list[dict[str, Any]]:
        """Requests answered and failed per server (for the manifest)."""
        return self.pool.stats()

    def _post(self, path: str, body: dict, stop: threading.Event) -> dict:
        """POST to the least-loaded server in rotation; retry elsewhere or later until
        ``retry_for`` seconds pass without an answer."""
        import httpx

        first_failure = None
        last = ""
        while not stop.is_set():
            ep, wait = self.pool.acquire()
            if ep is None:
                if first_failure and time.monotonic() - first_failure > self.retry_for:
                    break
                with self.pool.cond:
                    self.pool.cond.wait(min(wait, 1.0))
                continue
            error, slow = None, 1.0
            try:
                r = self.client.post(ep.url + path, json=body)
            except httpx.TransportError as err:  # refused, reset, timed out, ...
                error = f"{public_url(ep.url)}: {type(err).__name__}"
            else:
                if r.status_code == 200:
                    try:
                        data = r.json()
                    except ValueError:
                        error = (
                            f"{public_url(ep.url)}{path}: answered 200 with a body that is not JSON"
                        )
                    else:
                        self.pool.release(ep, None)
                        return data
                elif retryable(r.status_code):
                    error = f"{public_url(ep.url)}{path}: HTTP {r.status_code}"
                    slow = 0.5 if r.status_code == 429 else 1.0
                else:
                    self.pool.release(ep, None)  # the server is fine; the request is not
                    raise InputError(
                        f"{public_url(ep.url)}{path}: HTTP {r.status_code}: {_server_message(r)}"
                    )
            self.pool.release(ep, error, slow)
            last = error
            first_failure = first_failure or time.monotonic()
            if time.monotonic() - first_failure > self.retry_for:
                break
        raise BackendUnavailable(
            f"no server answered for {self.retry_for:g} s (last: {last or 'stopped'})"
        )

    def _run(
        self, jobs: list[tuple[str, dict]], on_done: Callable[[int, dict], None] | None = None
    ) -> list[dict]:
        """Send every (path, body); answers in order. Worker threads are daemons, so Ctrl-C
        returns at once. On a give-up, :class:`BackendUnavailable` carries the finished ones."""
        results: dict[int, dict] = {}
        todo: queue.Queue = queue.Queue()
        for i in range(len(jobs)):
            todo.put(i)
        done: queue.Queue = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, self._post(*jobs[i], stop), None))
                except BaseException as err:  # handed to the caller's thread
                    done.put((i, None, err))
                    return

        threads = [
            threading.Thread(target=work, daemon=True, name=f"cai-openai-{k}")
            for k in range(min(self.workers, len(jobs)))
        ]
        for t in threads:
            t.start()
        try:
            while len(results) < len(jobs):
                i, data, err = done.get()
                if err is not None:
                    raise err
                results[i] = data
                if on_done:
                    on_done(i, data)
        except BackendUnavailable as err:
            err.done = dict(results)
            raise
        finally:
            stop.set()
            with self.pool.cond:
                self.pool.cond.notify_all()
        return [results[i] for i in range(len(jobs))]

    # ---------------------------------------------------------------- generation

    def _gen_body(self, chat: Chat | str, params: Sampling, seed: int) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "seed": seed,
        }
        if params.temperature > 0 and params.top_p < 1:
            body["top_p"] = params.top_p
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty  # vLLM's extension
        if isinstance(chat, str):
            return "/completions", {**body, **self._prompt(chat)}
        return "/chat/completions", {**body, "messages": chat}

    def generate(
        self, chats: Sequence[Chat | str], params: Sampling, progress: Progress | None = None
    ) -> list[list[Completion]]:
        """``params.n`` samples per chat, one request each (seeds ``seed + j``)."""
        n = params.n
        jobs = [
            self._gen_body(c, params, (params.seed + 7919 * j + i) % 2**31)
            for i, c in enumerate(chats)
            for j in range(n)
        ]

        def on_done(_: int, data: dict) -> None:
            if progress:
                progress(0, _usage_tokens(data))

        per_chat: dict[int, int] = {}

        def count(i: int, data: dict) -> None:
            on_done(i, data)
            per_chat[i // n] = per_chat.get(i // n, 0) + 1
            if progress and per_chat[i // n] == n:
                progress(1, 0)

        try:
            answers = self._run(jobs, count)
        except BackendUnavailable as err:
            got = err.done
            err.done = {
                c: [_completion(got[c * n + j]) for j in range(n)]
                for c in range(len(chats))
                if all(c * n + j in got for j in range(n))
            }
            raise
        comps = [_completion(a) for a in answers]
        if any(c.prompt_tokens is None for c in comps):  # a server that reports no usage
            counted = self._counted(chats)
            comps = [
                replace(c, prompt_tokens=counted[i // n]) if counted else c
                for i, c in enumerate(comps)
            ]
        return [comps[i * n : (i + 1) * n] for i in range(len(chats))]

    def _counted(self, chats: Sequence[Chat | str]) -> list[int] | None:
        """The prompts' tokens counted with the model's tokenizer, or None where it cannot load."""
        try:
            return self.count_tokens(chats)
        except InputError:
            return None

    # ---------------------------------------------------------------- option log-probs

    def _tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            try:
                self._tok = AutoTokenizer.from_pretrained(
                    self.tokenizer_name, trust_remote_code=False
                )
            except (OSError, ValueError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise InputError(
                    f"the openai backend renders chats for option scoring with the model's own "
                    f"tokenizer, and cannot load {self.tokenizer_name!r}: {first}"
                ) from None
            if getattr(self._tok, "chat_template", None) is None:
                raise InputError(f"{self.tokenizer_name!r} has no chat template in its tokenizer")
        return self._tok

    def _prompt(self, text: str) -> dict:
        """A templated prompt for /v1/completions. When the template already wrote the BOS token,
        ask the server (vLLM's ``add_special_tokens``) not to add a second one."""
        tok = self._tok
        if tok is None or not tok.bos_token or not text.startswith(tok.bos_token):
            return {"prompt": text}
        if tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]:
            return {"prompt": text}  # this tokenizer adds no BOS of its own
        return {"prompt": text, "add_special_tokens": False}

    def render(self, chat: Chat) -> str:
        tok = self._tokenizer()
        return tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, prompts: Sequence[Chat | str]) -> list[int]:
        """Counted with the model's own tokenizer (what the servers' ``usage`` reports)."""
        tok = self._tokenizer()
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        return [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]

    def splits_cleanly(self, text: str, choices: Sequence[str]) -> bool:
        tok = self._tokenizer()
        enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        base = enc(text)
        return all(enc(text + c) == base + enc(c) for c in choices)

    def choice_logprobs(
        self, prompts: Sequence[Chat | str], choices: Sequence[str]
    ) -> list[list[float]]:
        """Per prompt, the log-prob of each choice as the next text.

        One ``/v1/completions`` request per prompt reads the top log-probs of the next token;
        a choice not among them is scored by echoing ``prompt + choice`` and summing the log-probs
        of the choice's tokens. A server that returns no log-probs is an error that says so.
        """
        texts = [p if isinstance(p, str) else self.render(p) for p in prompts]
        base = {"model": self.model, "max_tokens": 1, "temperature": 0.0}
        answers = self._run(
            [("/completions", {**base, **self._prompt(t), "logprobs": TOP_LOGPROBS}) for t in texts]
        )
        rows = [next_token_scores(a, choices, self.model) for a in answers]
        missing = [(i, j) for i, row in enumerate(rows) for j, v in enumerate(row) if v is None]
        if missing:
            echoed = self._run(
                [
                    (
                        "/completions",
                        {
                            **base,
                            **self._prompt(texts[i] + choices[j]),
                            "echo": True,
                            "logprobs": 1,
                        },
                    )
                    for i, j in missing
                ]
            )
            for (i, j), a in zip(missing, echoed):
                rows[i][j] = echoed_score(a, len(texts[i]), choices[j], TOP_LOGPROBS)
        return rows  # type: ignore[return-value]


def _server_message(r) -> str:
    try:
        data = r.json()
        msg = data.get("detail") or data.get("error") or data
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
    except ValueError:
        msg = r.text
    return " ".join(str(msg).split())[:300]


def _usage_tokens(data: dict) -> int:
    return int((data.get("usage") or {}).get("completion_tokens") or 0)


def _completion(data: dict) -> Completion:
    choice = (data.get("choices") or [{}])[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("message") or {}).get("content") or ""
    reason = "length" if choice.get("finish_reason") == "length" else "stop"
    prompt = (data.get("usage") or {}).get("prompt_tokens")
    return Completion(text.strip(), _usage_tokens(data), reason, prompt and int(prompt))


def _logprobs_of(data: dict, model: str) -> dict:
    lp = ((data.get("choices") or [{}])[0]).get("logprobs")
    if not lp or not (lp.get("top_logprobs") or lp.get("token_logprobs")):
        raise NoLogprobs(
            f"the server for {model!r} returns no log-probs on /v1/completions (asked for "
            f"logprobs={TOP_LOGPROBS}), so it cannot score options; serve the judge with "
            "vllm serve, or use --backend hf or vllm for it"
        )
    return lp


def next_token_scores(data: dict, choices: Sequence[str], model: str) -> list[float | None]:
    """Each choice's log-prob among the next token's top log-probs (None when not among them).

    >>> a = {"choices": [{"logprobs": {"top_logprobs": [{"A": -0.1, "B": -2.4}]}}]}
    >>> next_token_scores(a, ["A", "B", "C"], "m")
    [-0.1, -2.4, None]
    """
    top = (_logprobs_of(data, model).get("top_logprobs") or [None])[0] or {}
    return [top.get(c) for c in choices]


def echoed_score(data: dict, start: int, choice: str, k: int) -> float:
    """Sum of the echoed log-probs of the tokens that begin at or after character ``start``.

    >>> a = {"choices": [{"logprobs": {"tokens": ["Q", ":", " (", "B", " x"],
    ...     "token_logprobs": [None, -1.0, -0.5, -3.0, -0.2], "text_offset": [0, 1, 2, 4, 5]}}]}
    >>> echoed_score(a, 4, "B", 20)
    -3.0
    """
    lp = _logprobs_of(data, "the server")
    offsets, values = lp.get("text_offset") or [], lp.get("token_logprobs") or []
    picked = [
        v for off, v in zip(offsets, values) if start <= off < start + len(choice) and v is not None
    ]
    if not picked:
        raise NoLogprobs(
            f"option {choice!r} is not among the server's top {k} next tokens, and the server "
            "does not echo prompt log-probs to score it another way"
        )
    return float(sum(picked))
