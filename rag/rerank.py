"""Optional reranking of retrieved passages by a sentence-transformers CrossEncoder.

Set ``RAG_RETRIEVAL__RERANK_MODEL`` to a local folder or a hub id (for example a bge-reranker
or ms-marco cross-encoder you have on disk). The top ``rerank_candidates`` passages of the
dense, keyword or hybrid ranking are scored together with the query, and the best ``top_k``
are kept, ordered by that score.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingest.embedding import pick_device
from ingest.heap import freeze_loaded
from ingest.model_thread import ModelThread
from rag.types import Passage
from stores.errors import ModelUnavailable


class CrossEncoderReranker:
    """Loaded on first use; safe to share between threads."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 32) -> None:
        self.model_id = model
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()
        # Every call into the model runs on one thread (see ``ingest.model_thread``), so the
        # request threads never each grow a PyTorch thread team. Only ``call`` is used: the
        # query batching is the embedders', and ``_predict`` just fills that slot.
        self._worker = ModelThread("rag-rerank", self._predict)

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import CrossEncoder

                path = Path(self.model_id).expanduser()
                if not path.exists() and self.model_id.startswith(("/", ".", "~")):
                    raise ModelUnavailable(
                        f"reranking model folder {path} does not exist. Set "
                        "RAG_RETRIEVAL__RERANK_MODEL to a local cross-encoder folder, or unset "
                        "it to retrieve without reranking")
                try:
                    self._model = CrossEncoder(
                        str(path) if path.exists() else self.model_id,
                        device=pick_device(self.device), local_files_only=path.exists())
                except Exception as exc:
                    raise ModelUnavailable(
                        f"cannot load reranking model {self.model_id}: {exc}. Set "
                        "RAG_RETRIEVAL__RERANK_MODEL to a local cross-encoder folder, or unset "
                        "it to retrieve without reranking") from exc
                freeze_loaded()
            return self._model

    def warm_up(self) -> None:
        self._worker.call(self._load)

    def close(self) -> None:
        """Stop the model thread (a later call starts another)."""
        self._worker.close()

    def scores(self, query: str, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return self._worker.call(self._scores, query, texts)

    def _scores(self, query: str, texts: list[str]) -> list[float]:
        raw = self._predict([(query, t) for t in texts])
        return [float(s) for s in raw.reshape(len(texts), -1)[:, -1]]

    def _predict(self, pairs: list[Any]) -> Any:
        return self._load().predict(pairs, batch_size=self.batch_size,
                                    show_progress_bar=False, convert_to_numpy=True)

    def rerank(self, query: str, passages: list[Passage], top_k: int) -> list[Passage]:
        """``passages`` ordered by the cross-encoder's score (which becomes their ``score``;
        the first-stage score stays in ``dense_score`` / ``keyword_score``)."""
        scored = zip(self.scores(query, [p.text for p in passages]), passages, strict=True)
        ranked = sorted(scored, key=lambda sp: -sp[0])
        return [replace(p, score=s, rerank_score=s) for s, p in ranked[:top_k]]
