"""Transformers backend: any causal LM with a chat template, on CUDA/ROCm GPU or CPU.

Device and dtype are chosen once (bf16/fp16 on GPU; on CPU bf16 where the processor computes
it, else fp32; ``torch.cuda`` covers Hygon DCU builds); ``quantize=4bit|8bit`` loads through
bitsandbytes on a GPU. One scheduler thread owns the model: requests queue up, and those
waiting with the same sampling settings run as one left-padded batch, each streaming its own
tokens. A request's stop strings, token limit or cancellation (its consumer went away) end
its row; the batch ends when every row has.

PyTorch's OpenMP teams belong to threads and slow every other team while they exist, idle or
not (see ``ingest.model_thread``), so the model is loaded on a thread that ends with the load,
and the scheduler thread ends after ``IDLE_EXIT_S`` without requests (the next one starts it
again): a server that has answered a question retrieves as fast afterwards as before.
``close()`` (and the end of the program) stops it at once: a script that ended while the
scheduler was still alive, idle, aborted at exit ("terminate called without an active
exception", exit code 134).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.config import native_bfloat16
from ingest.heap import freeze_loaded
from rag.generation.aio import aiterate_in_thread
from rag.generation.base import (
    Completion,
    Delta,
    GenerationParams,
    Message,
    acollect,
    close_at_exit,
    collect,
)
from rag.generation.models import SMOLLM2_ID, chat_token_ids, smollm2_folder
from rag.settings import GeneratorConfig
from stores.errors import GenerationError, InvalidInput, MissingDependency, ModelUnavailable

_END = object()
IDLE_EXIT_S = 2.0


@dataclass
class _Request:
    """One generation in flight: its prompt, its output channel and its row state."""

    ids: list[int]
    params: GenerationParams
    submitted: float = field(default_factory=time.perf_counter)
    out: queue.Queue[object] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    finish: str = "length"
    first: float | None = None

    @property
    def batch_key(self) -> tuple[float, float, bool] | None:
        """Requests with equal keys may share a batch; a seeded one runs alone."""
        if self.params.seed is not None:
            return None
        return (self.params.temperature, self.params.top_p, self.params.ignore_eos)


class TransformersGenerator:
    """A Hugging Face causal LM; cheap to construct, loaded by ``warm_up()`` or first use."""

    def __init__(self, config: GeneratorConfig, cache_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos: set[int] = set()
        self._load_lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()  # None: stop when idle
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self.idle_exit_s = IDLE_EXIT_S
        self.device = "cpu"
        self.batches_run = 0  # how many model.generate calls served the requests so far
        close_at_exit(self)

    def close(self, timeout: float | None = None) -> None:
        """Stop the scheduler thread once the requests already queued are served (a later
        request starts another), waiting up to ``timeout`` seconds. The model stays loaded."""
        with self._worker_lock:
            worker = self._worker
        if worker is None or worker is threading.current_thread():
            return
        self._queue.put(None)
        worker.join(timeout)

    @property
    def model_id(self) -> str:
        return self.config.model or SMOLLM2_ID

    # -- loading ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            # Leaving the ``with`` joins the loading thread; its error is raised here.
            with ThreadPoolExecutor(1, thread_name_prefix="rag-transformers-load") as loader:
                loader.submit(self._load).result()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = self._resolve_source()
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        local = Path(source).exists()
        extra = self._quantization(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=self._dtype(torch, device), local_files_only=local, **extra
            )
        except Exception as exc:
            raise ModelUnavailable(
                f"cannot load generation model {source}: {exc}. Set RAG_GENERATOR__MODEL "
                "to a local model folder when offline"
            ) from exc
        if tokenizer.chat_template is None:
            raise ModelUnavailable(f"{source} has no chat template; use an instruct model")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not extra:  # a quantized model is placed by bitsandbytes
            model = model.to(device)  # type: ignore[arg-type]  # transformers stub quirk
        model.eval()
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._eos = {int(i) for i in [*eos_ids, tokenizer.eos_token_id] if i is not None}
        self._model, self._tokenizer, self.device = model, tokenizer, device
        freeze_loaded()

    def _resolve_source(self) -> str:
        if self.config.model is None:
            return str(smollm2_folder(self.cache_dir))
        path = Path(self.config.model).expanduser()
        return str(path) if path.exists() else self.config.model

    def _dtype(self, torch: Any, device: str) -> Any:
        if self.config.dtype != "auto":
            return getattr(torch, self.config.dtype)
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # A CPU that computes bfloat16 decodes it faster: SmolLM2 answered 200 SQuAD
        # questions in about 0.75 of float32's time on 2 cores, and as well (token F1 0.088
        # against 0.081, abstention 0.02 in both).
        return torch.bfloat16 if native_bfloat16() else torch.float32

    def _quantization(self, device: str) -> dict[str, Any]:
        if self.config.quantize is None:
            return {}
        if not device.startswith("cuda"):
            raise InvalidInput("quantize=4bit/8bit needs a CUDA GPU (bitsandbytes); unset "
                               "RAG_GENERATOR__QUANTIZE on CPU")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise MissingDependency("4-bit/8-bit loading", "gpu") from exc
        bnb = (BitsAndBytesConfig(load_in_4bit=True) if self.config.quantize == "4bit"
               else BitsAndBytesConfig(load_in_8bit=True))
        return {"quantization_config": bnb, "device_map": device}

    @property
    def context_window(self) -> int:
        if self.config.context_window:
            return self.config.context_window
        self.warm_up()
        cfg = self._model.config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self._encode(messages))

    def _encode(self, messages: list[Message]) -> list[int]:
        self.warm_up()
        return chat_token_ids(self._tokenizer, messages)

    # -- the Generator protocol ---------------------------------------------------------------

    def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        return collect(self.stream(messages, params))

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        if params.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1")
        ids = self._encode(messages)
        if len(ids) + params.max_tokens > self.context_window:
            raise InvalidInput(
                f"prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) exceed "
                f"the model's context window ({self.context_window})"
            )
        req = _Request(ids, params)
        self._queue.put(req)
        with self._worker_lock:
            if self._worker is None:  # none yet, or it ended idle
                self._worker = threading.Thread(target=self._serve, daemon=True,
                                                name="rag-transformers-scheduler")
                self._worker.start()
        return self._drain(req)

    def _drain(self, req: _Request) -> Iterator[Delta]:
        try:
            while True:
                item = req.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise GenerationError(f"generation failed: {item}") from item
                assert isinstance(item, Delta)
                yield item
        finally:
            req.cancelled.set()  # a consumer that stops early frees its batch row

    async def agenerate(self, messages: list[Message], params: GenerationParams) -> Completion:
        return await acollect(self.astream(messages, params))

    def astream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[Delta]:
        return aiterate_in_thread(lambda: self.stream(messages, params))

    # -- the scheduler ------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_exit_s)
            except queue.Empty:
                first = None
            if first is None:  # idle, or asked to stop
                with self._worker_lock:
                    if self._queue.empty():  # a request put before this sees a live worker
                        self._worker = None
                        return
                continue
            batch: list[_Request] = [first]
            later: list[_Request | None] = []
            deadline = time.perf_counter() + self.config.batch_wait_ms / 1000
            while len(batch) < self.config.max_batch:
                try:  # a burst of requests arrives over a few ms: gather it into one batch
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if nxt is None:  # a stop: after this batch
                    later.append(nxt)
                    break
                same = nxt.batch_key is not None and nxt.batch_key == first.batch_key
                (batch if same else later).append(nxt)
            for req in later:  # back in line for the next round
                self._queue.put(req)
            batch = [r for r in batch if not r.cancelled.is_set()] or batch[:0]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        import torch

        self.batches_run += 1
        try:
            longest = max(len(r.ids) for r in batch)
            pad = self._tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (longest - len(r.ids)) + r.ids for r in batch])
            mask = torch.tensor([[0] * (longest - len(r.ids)) + [1] * len(r.ids) for r in batch])
            params = batch[0].params
            kwargs: dict[str, Any] = {
                "input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device),
                "max_new_tokens": max(r.params.max_tokens for r in batch),
                "pad_token_id": pad, "repetition_penalty": self.config.repetition_penalty,
                "streamer": _BatchStreamer(self, batch),
                "stopping_criteria": [_RowsDone(batch)],
            }
            if params.temperature > 0:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if params.ignore_eos:
                kwargs["min_new_tokens"] = kwargs["max_new_tokens"]
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                self._model.generate(**kwargs)
        except Exception as exc:  # every row of the batch learns why
            for req in batch:
                req.out.put(exc)
            return
        for req in batch:
            self._finish(req)

    def _accept(self, req: _Request, token: int) -> None:
        """One new token for a row: emit the text it completes, then check the row's end."""
        if req.done:
            return
        if token in self._eos and not req.params.ignore_eos:
            req.done, req.finish = True, "stop"
            return
        req.tokens.append(token)
        text = self._tokenizer.decode(req.tokens, skip_special_tokens=True)
        for stop in req.params.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, req.done, req.finish = text[:cut], True, "stop"
        if not req.done and len(req.tokens) >= req.params.max_tokens:
            req.done, req.finish = True, "length"
        # At the end, a character whose bytes the last token left unfinished never comes
        # whole: it is dropped, not shown as U+FFFD.
        ready = text.rstrip("\ufffd") if req.done else _safe_prefix(text, req.params.stop)
        if len(ready) > len(req.sent) and ready.startswith(req.sent):
            if req.first is None:
                req.first = time.perf_counter() - req.submitted
            req.out.put(Delta(ready[len(req.sent):]))
            req.sent = ready

    def _finish(self, req: _Request) -> None:
        total = time.perf_counter() - req.submitted
        if req.cancelled.is_set() and req.finish == "length" and not req.done:
            req.finish = "stop"
        req.out.put(Delta("", Completion(
            req.sent, req.finish, len(req.ids), len(req.tokens),
            req.first if req.first is not None else total, total)))
        req.out.put(_END)


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """The part of ``text`` that can be shown now: without an unfinished multi-byte character
    and without a tail that may still grow into a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return text[: len(text) - hold] if hold else text


class _BatchStreamer:
    """transformers streamer: receives each step's tokens (one per row) for the batch."""

    def __init__(self, gen: TransformersGenerator, batch: list[_Request]) -> None:
        self.gen, self.batch, self.prompt_seen = gen, batch, False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for req, token in zip(self.batch, value.reshape(-1).tolist(), strict=True):
            self.gen._accept(req, int(token))

    def end(self) -> None:
        return None


class _RowsDone:
    """Stopping criterion: per row, done (stop string, own token limit) or cancelled."""

    def __init__(self, batch: list[_Request]) -> None:
        self.batch = batch

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor([r.done or r.cancelled.is_set() for r in self.batch],
                            device=input_ids.device)
