"""Transformers backend: any causal LM with a chat template, on CUDA/ROCm GPU or CPU.

Device and dtype are chosen once (bf16/fp16 on GPU, fp32 on CPU). One lock serializes
generation on the model: never two ``generate`` calls racing on one set of weights.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.generation.base import Completion, Delta, GenerationParams, Message
from rag.generation.models import SMOLLM2_ID, smollm2_folder
from rag.settings import GeneratorConfig
from stores.errors import GenerationError, InvalidInput, ModelUnavailable


class TransformersGenerator:
    """A Hugging Face causal LM; cheap to construct, loaded by ``warm_up()`` or first use."""

    def __init__(self, config: GeneratorConfig, cache_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self.device = "cpu"

    @property
    def model_id(self) -> str:
        return self.config.model or SMOLLM2_ID

    def warm_up(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            source = self._resolve_source()
            device = self.config.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = self._dtype(torch, device)
            local = Path(source).exists()
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
                model = AutoModelForCausalLM.from_pretrained(
                    source, dtype=dtype, local_files_only=local
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
            model = model.to(device)  # type: ignore[arg-type]  # transformers stub quirk
            model.eval()
            self._model, self._tokenizer, self.device = model, tokenizer, device

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
        return torch.float32

    @property
    def context_window(self) -> int:
        if self.config.context_window:
            return self.config.context_window
        self.warm_up()
        cfg = self._model.config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)

    def count_tokens(self, messages: list[Message]) -> int:
        return int(self._encode(messages)["input_ids"].shape[1])

    def _encode(self, messages: list[Message]) -> Any:
        self.warm_up()
        return self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )

    def _gen_kwargs(self, inputs: Any, params: GenerationParams) -> dict[str, Any]:
        if params.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1")
        kwargs: dict[str, Any] = {
            **{k: v.to(self.device) for k, v in inputs.items()},
            "max_new_tokens": params.max_tokens,
            "pad_token_id": self._tokenizer.pad_token_id,
            "repetition_penalty": self.config.repetition_penalty,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self._tokenizer)
        return kwargs

    def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        final: Completion | None = None
        for delta in self.stream(messages, params):
            final = delta.completion or final
        assert final is not None
        return final

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        import torch
        from transformers import TextIteratorStreamer

        inputs = self._encode(messages)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if prompt_tokens + params.max_tokens > self.context_window:
            raise InvalidInput(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({params.max_tokens}) exceed "
                f"the model's context window ({self.context_window})"
            )
        streamer = TextIteratorStreamer(
            self._tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
        )
        kwargs = self._gen_kwargs(inputs, params)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                with torch.inference_mode():
                    result["ids"] = self._model.generate(**kwargs, streamer=streamer)
            except Exception as exc:  # surfaced to the caller below
                result["error"] = exc
                streamer.end()

        start = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        with self._generate_lock:
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            for piece in streamer:
                if not piece:
                    continue
                if first is None:
                    first = time.perf_counter() - start
                pieces.append(piece)
                yield Delta(piece)
            worker.join()
        if "error" in result:
            raise GenerationError(f"generation failed: {result['error']}") from result["error"]
        total = time.perf_counter() - start
        completion_tokens = int(result["ids"].shape[1]) - prompt_tokens
        text = "".join(pieces)
        finish = "length" if completion_tokens >= params.max_tokens else "stop"
        for stop in params.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        yield Delta("", Completion(text, finish, prompt_tokens, completion_tokens,
                                   first if first is not None else total, total))
