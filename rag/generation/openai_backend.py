"""OpenAI-compatible backend: any server with ``/v1/chat/completions`` (vLLM serve, TGI,
TensorRT-LLM's trtllm-serve, SGLang, Ollama, or our own API).

Streaming over server-sent events. Bounded timeouts; retries with exponential backoff on
connection errors, 429 and 5xx, honouring ``Retry-After``, but only before the first token
has been passed on (a stream cut mid-way is an error, never a silent restart). A circuit
breaker makes a dead server fail fast with ``GenerationError`` instead of piling up requests.
The native side is asynchronous (httpx); the synchronous twins run on one background loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from rag.generation.aio import LoopThread
from rag.generation.base import Completion, Delta, GenerationParams, Message, acollect
from rag.settings import GeneratorConfig
from stores.errors import GenerationError, InvalidInput, ModelUnavailable

_RETRYABLE = {408, 429, 500, 502, 503, 504}


class CircuitBreaker:
    """Open after ``threshold`` consecutive failures; after ``reset_s`` let one trial through
    (half-open): its success closes the circuit, its failure opens it again."""

    def __init__(self, threshold: int, reset_s: float) -> None:
        self.threshold, self.reset_s = threshold, reset_s
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    def before(self, where: str) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            waited = time.monotonic() - self._opened_at
            if waited < self.reset_s or self._trial:
                raise GenerationError(
                    f"the model server at {where} failed {self._failures} times in a row; "
                    f"not calling it for another {max(0.0, self.reset_s - waited):.0f}s"
                )
            self._trial = True

    def success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial = False
            if self._failures >= self.threshold:
                self._opened_at = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def estimate_tokens(text: str) -> int:
    """Tokens a text takes, estimated without the server's tokenizer: one per CJK character,
    one per 3.5 other characters. It errs high, so a prompt budget built on it stays safe."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")
    return cjk + int((len(text) - cjk) / 3.5) + 1


class OpenAIGenerator:
    """A chat model served behind an OpenAI-compatible HTTP API."""

    def __init__(self, config: GeneratorConfig) -> None:
        oc = config.openai
        if not oc.base_url:
            raise InvalidInput("the openai generator needs RAG_GENERATOR__OPENAI__BASE_URL "
                               "(for example http://127.0.0.1:8000/v1)")
        self.config = config
        self.base_url = oc.base_url.rstrip("/")
        key = oc.api_key.get_secret_value() if oc.api_key else ""
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(oc.timeout, connect=oc.connect_timeout)
        self.breaker = CircuitBreaker(oc.breaker_failures, oc.breaker_reset_s)
        self._loop = LoopThread()
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._model: str | None = config.model
        self._context: int | None = config.context_window

    # -- identity and budget ----------------------------------------------------------------

    @property
    def model_id(self) -> str:
        if self._model is None:
            self._discover()
        assert self._model is not None
        return self._model

    @property
    def context_window(self) -> int:
        if self._context is None:
            self._discover()
        return self._context or 4096

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(estimate_tokens(m.content) + 4 for m in messages) + 2

    def warm_up(self) -> None:
        self._discover()

    def _discover(self) -> None:
        """Ask ``/models`` for the served model (when none is configured) and its context
        length (vLLM reports ``max_model_len``)."""
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers, timeout=self._timeout)
            r.raise_for_status()
            models = r.json().get("data") or []
        except (httpx.HTTPError, ValueError) as exc:
            raise ModelUnavailable(f"cannot list models at {self.base_url}: {exc}") from exc
        chosen = next((m for m in models if m.get("id") == self._model), None)
        if chosen is None and self._model is None and models:
            chosen = models[0]
        if self._model is None:
            if chosen is None:
                raise ModelUnavailable(f"the server at {self.base_url} serves no model")
            self._model = str(chosen["id"])
        if self._context is None and chosen is not None:
            found = chosen.get("max_model_len") or chosen.get("context_length")
            self._context = int(found) if found else 4096

    # -- generation ---------------------------------------------------------------------------

    def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        result = self._loop.run(lambda: self.agenerate(messages, params))
        assert isinstance(result, Completion)
        return result

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        return self._loop.iterate(lambda: self.astream(messages, params))

    async def agenerate(self, messages: list[Message], params: GenerationParams) -> Completion:
        return await acollect(self.astream(messages, params))

    async def astream(self, messages: list[Message],
                      params: GenerationParams) -> AsyncIterator[Delta]:
        if params.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1")
        body = self._body(messages, params)
        oc = self.config.openai
        attempt = 0
        while True:
            self.breaker.before(self.base_url)
            started = time.perf_counter()
            sent_any = False
            try:
                async for delta in self._one_stream(body, started):
                    sent_any = True
                    yield delta
                self.breaker.success()
                return
            except _Retryable as exc:
                self.breaker.failure()
                if sent_any or attempt >= oc.max_retries or self.breaker.is_open:
                    raise GenerationError(
                        f"the model server at {self.base_url} failed: {exc}") from exc
                delay = exc.retry_after if exc.retry_after is not None else min(
                    oc.backoff_max_s, oc.backoff_s * 2 ** attempt) * (0.5 + random.random())
                attempt += 1
                await asyncio.sleep(delay)
            except httpx.TimeoutException as exc:
                self.breaker.failure()
                raise GenerationError(
                    f"the model server at {self.base_url} did not answer within "
                    f"{oc.timeout:.0f}s ({type(exc).__name__})") from exc

    def _body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.ignore_eos:
            body["ignore_eos"] = True  # vLLM's extension; other servers ignore it
        return body

    def _client(self) -> httpx.AsyncClient:
        loop_id = id(asyncio.get_running_loop())  # an AsyncClient belongs to one loop
        client = self._clients.get(loop_id)
        if client is None:
            client = httpx.AsyncClient(timeout=self._timeout, headers=self._headers)
            self._clients[loop_id] = client
        return client

    async def _one_stream(self, body: dict[str, Any], started: float) -> AsyncIterator[Delta]:
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._client().stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    await self._raise_for(resp)
                async for delta in self._parse_sse(resp, body, started):
                    yield delta
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError, httpx.ConnectTimeout) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc or 'connection lost'}") from exc

    async def _raise_for(self, resp: httpx.Response) -> None:
        raw = (await resp.aread()).decode("utf-8", "replace")
        try:
            err = json.loads(raw).get("error") or {}
            message = err.get("message") if isinstance(err, dict) else str(err)
        except ValueError:
            message = raw[:300]
        message = message or raw[:300] or resp.reason_phrase
        if resp.status_code in _RETRYABLE:
            after = resp.headers.get("retry-after")
            raise _Retryable(f"HTTP {resp.status_code}: {message}",
                             float(after) if after and after.replace(".", "").isdigit() else None)
        if resp.status_code in (400, 422):
            raise InvalidInput(f"the model server refused the request: {message}")
        raise GenerationError(f"the model server answered HTTP {resp.status_code}: {message}")

    async def _parse_sse(self, resp: httpx.Response, body: dict[str, Any],
                         started: float) -> AsyncIterator[Delta]:
        pieces: list[str] = []
        first: float | None = None
        finish = "stop"
        usage: dict[str, Any] = {}
        done = False
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                event = json.loads(data)
            except ValueError:
                raise GenerationError(
                    f"the model server sent a malformed event: {data[:200]}") from None
            if "error" in event:
                raise GenerationError(f"the model server failed mid-stream: {event['error']}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
                if piece:
                    if first is None:
                        first = time.perf_counter() - started
                    pieces.append(piece)
                    yield Delta(piece)
        if not done:
            raise _Retryable("the stream ended before [DONE]") if not pieces else GenerationError(
                f"the model server at {self.base_url} closed the stream mid-answer")
        total = time.perf_counter() - started
        text = "".join(pieces)
        prompt = int(usage.get("prompt_tokens") or sum(
            estimate_tokens(m["content"]) for m in body["messages"]))
        completion = int(usage.get("completion_tokens") or estimate_tokens(text))
        yield Delta("", Completion(text, "length" if finish == "length" else "stop", prompt,
                                   completion, first if first is not None else total, total))

    def close(self) -> None:
        """Close the connections and stop the loop thread; a later request opens them again."""
        for client in self._clients.values():
            self._loop.run(client.aclose)
        self._clients.clear()
        self._loop.close()
