"""Retrieval: dense, keyword (BM25) or hybrid, resolved through the catalog.

Hybrid fuses the two rankings by weighted reciprocal rank fusion. Each ranking first
passes its own relevance gate (dense: cosine >= ``min_score``; keyword: the passage holds
at least ``min_keyword_coverage`` of the query's terms), so an uninformative ranking adds
nothing instead of pushing noise in; and a Chinese query on an English-only embedder gives
the dense ranking a low weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ingest.catalog import Catalog, KnowledgeBase
from ingest.embedding import Embedder
from ingest.pipeline import Indexes
from rag.rerank import CrossEncoderReranker
from rag.settings import RetrievalConfig
from rag.types import Passage
from stores.base import Filter
from stores.errors import InvalidInput
from stores.keyword import has_cjk

Mode = Literal["dense", "keyword", "hybrid"]
_MULTILINGUAL_HINTS = ("multilingual", "bge-m3", "-zh", "chinese", "e5", "labse", "paraphrase-x")


def is_multilingual(model_id: str) -> bool:
    """Whether an embedding model ranks Chinese text usefully (by its name)."""
    lowered = model_id.lower()
    return any(hint in lowered for hint in _MULTILINGUAL_HINTS)


@dataclass(frozen=True)
class _Ranked:
    id: str
    dense: float | None = None
    keyword: float | None = None
    fused: float = 0.0


class Retriever:
    """Finds passages in one knowledge base's indexes."""

    def __init__(self, catalog: Catalog, embedder: Embedder, config: RetrievalConfig) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.config = config
        self.reranker = (CrossEncoderReranker(config.rerank_model, config.rerank_device)
                         if config.rerank_model else None)

    def search(
        self,
        kb: KnowledgeBase,
        indexes: Indexes,
        query: str,
        top_k: int | None = None,
        mode: Mode | None = None,
        min_score: float | None = None,
        filter: Filter | None = None,
        rerank: bool | None = None,
    ) -> list[Passage]:
        """``rerank``: None reranks when a rerank model is configured; True requires one."""
        if rerank and self.reranker is None:
            raise InvalidInput("reranking was asked for, but no rerank model is configured "
                               "(RAG_RETRIEVAL__RERANK_MODEL)")
        if not query.strip():
            raise InvalidInput("the query is empty")
        k = top_k or self.config.top_k
        if k < 1:
            raise InvalidInput("top_k must be at least 1")
        mode = mode or self.config.mode
        threshold = self.config.min_score if min_score is None else min_score
        pool = max(k, self.config.candidates)
        dense: list[tuple[str, float]] = []
        keyword: list[tuple[str, float]] = []
        if mode in ("dense", "hybrid"):
            vector = self.embedder.embed_query(query)
            dense = [(h.id, h.score) for h in indexes.vectors.query(vector, pool, filter)
                     if h.score >= threshold]
        if mode in ("keyword", "hybrid"):
            keyword = [(h.id, h.score) for h in indexes.keywords.search(query, pool, filter)
                       if h.coverage >= self.config.min_keyword_coverage]
        if mode == "dense":
            ranked = [_Ranked(i, dense=s, fused=s) for i, s in dense]
        elif mode == "keyword":
            ranked = [_Ranked(i, keyword=s, fused=s) for i, s in keyword]
        else:
            ranked = self._fuse(query, dense, keyword)
        if self.reranker is not None and rerank is not False:
            n = max(k, self.config.rerank_candidates)
            return self.reranker.rerank(query, self._resolve(kb, ranked[: n + 5])[:n], k)
        return self._resolve(kb, ranked[: max(k * 2, k + 5)])[:k]

    def _fuse(
        self, query: str, dense: list[tuple[str, float]], keyword: list[tuple[str, float]]
    ) -> list[_Ranked]:
        w_dense = 1.0
        if has_cjk(query) and not is_multilingual(self.embedder.model_id):
            # An English-only embedder scores unrelated Chinese text as high as related text:
            # it may only reorder passages the keyword ranking found, never add its own.
            w_dense = self.config.cjk_dense_weight
            found = {cid for cid, _ in keyword}
            dense = [(cid, s) for cid, s in dense if cid in found]
        c = self.config.rrf_k
        scores: dict[str, float] = {}
        dense_of = dict(dense)
        keyword_of = dict(keyword)
        for rank, (cid, _) in enumerate(dense):
            scores[cid] = scores.get(cid, 0.0) + w_dense / (c + rank + 1)
        for rank, (cid, _) in enumerate(keyword):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (c + rank + 1)
        order = sorted(scores, key=lambda cid: -scores[cid])
        return [_Ranked(cid, dense_of.get(cid), keyword_of.get(cid), scores[cid]) for cid in order]

    def _resolve(self, kb: KnowledgeBase, ranked: list[_Ranked]) -> list[Passage]:
        """Keep hits whose chunk the catalog records (chunk rows exist only for committed
        versions, so vectors a crash left behind are never cited); text and span come from it."""
        known = self.catalog.resolve_chunks(kb.id, [r.id for r in ranked])
        out = []
        for r in ranked:
            entry = known.get(r.id)
            if entry is None:
                continue
            chunk, doc = entry
            out.append(
                Passage(chunk_id=chunk.id, document_id=doc.id, document_name=doc.name,
                        text=chunk.text, start=chunk.start, end=chunk.end, page=chunk.page,
                        score=r.fused, dense_score=r.dense, keyword_score=r.keyword)
            )
        return out
