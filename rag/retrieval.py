"""Retrieval: dense, keyword (BM25) or hybrid, resolved through the catalog.

Hybrid fuses the two rankings by their scores (``fusion="score"``, the default): each
score is divided by the best score of its ranking, and a passage's fused score is
``dense_weight`` times its dense share plus the rest times its keyword share. Unlike rank
fusion, the size of a lead counts: a clear BM25 match keeps its place when the dense
ranking only barely prefers another passage. Reciprocal rank fusion is
kept as ``fusion="rrf"``. A hybrid candidate must pass one of the relevance gates (dense:
cosine >= ``min_score``; keyword: it holds ``min_keyword_coverage`` of the query's terms),
so a question about nothing in the base finds nothing. A Chinese query on an English-only
embedder gets ``cjk_dense_weight`` (0 by default: hybrid is then BM25, as MiniLM's ranking of
Chinese text is noise; cmrc2018-dev, 1,000 questions: dense recall@5 0.420, BM25 0.995, fused
at 0.3 0.994), and the dense ranking may only reorder what the keyword ranking found.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from ingest.catalog import Catalog, KnowledgeBase
from ingest.embedding import Embedder
from ingest.types import Indexes, check_embedder
from rag.rerank import CrossEncoderReranker
from rag.settings import RetrievalConfig
from rag.types import Passage
from stores.base import Filter
from stores.errors import InvalidInput
from stores.tokens import has_cjk

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
        self._side = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rag-bm25")
        self.reranker = (CrossEncoderReranker(config.rerank_model, config.rerank_device)
                         if config.rerank_model else None)

    def check_rerank(self, rerank: bool | None) -> None:
        """``rerank=True`` needs a rerank model: InvalidInput saying how to set one."""
        if rerank and self.reranker is None:
            raise InvalidInput("reranking was asked for, but no rerank model is configured: "
                               "set RAG_RETRIEVAL__RERANK_MODEL to a sentence-transformers "
                               "CrossEncoder (a local folder or a hub id)")

    def close(self) -> None:
        """Stop the keyword-search threads and the reranker's model thread."""
        self._side.shutdown(wait=True)
        if self.reranker is not None:
            self.reranker.close()

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
        self.check_rerank(rerank)
        if not query.strip():
            raise InvalidInput("the query is empty")
        k = top_k or self.config.top_k
        if k < 1:
            raise InvalidInput("top_k must be at least 1")
        mode = mode or self.config.mode
        if mode == "hybrid" and self._dense_weight(query) == 0.0:
            mode = "keyword"  # the dense ranking would count for nothing: skip the model
        if mode != "keyword":
            check_embedder(kb, self.embedder)
        threshold = self.config.min_score if min_score is None else min_score
        pool = max(k, self.config.candidates)
        if mode == "hybrid":
            # BM25 runs while the model embeds the query: hybrid costs about what dense does.
            keyword_hits = self._side.submit(indexes.keywords.search, query, pool, filter)
            vector = self.embedder.embed_query(query)
            dense = [(h.id, h.score) for h in indexes.vectors.query(vector, pool, filter)]
            hits = keyword_hits.result()
            covered = {h.id for h in hits if h.coverage >= self.config.min_keyword_coverage}
            relevant = covered | {i for i, s in dense if s >= threshold}
            ranked = [r for r in self._fuse(query, dense, [(h.id, h.score) for h in hits])
                      if r.id in relevant]
        elif mode == "dense":
            vector = self.embedder.embed_query(query)
            ranked = [_Ranked(h.id, dense=h.score, fused=h.score)
                      for h in indexes.vectors.query(vector, pool, filter) if h.score >= threshold]
        else:
            ranked = [_Ranked(h.id, keyword=h.score, fused=h.score)
                      for h in indexes.keywords.search(query, pool, filter)
                      if h.coverage >= self.config.min_keyword_coverage]
        if self.reranker is not None and rerank is not False:
            n = max(k, self.config.rerank_candidates)
            return self.reranker.rerank(query, self._resolve(kb, ranked[: n + 5])[:n], k)
        return self._resolve(kb, ranked[: max(k * 2, k + 5)])[:k]

    def _fuse(
        self, query: str, dense: list[tuple[str, float]], keyword: list[tuple[str, float]]
    ) -> list[_Ranked]:
        w_dense = self._dense_weight(query)
        if self._english_only_on_cjk(query):
            # An English-only embedder scores unrelated Chinese text as high as related text:
            # it may only reorder passages the keyword ranking found, never add its own.
            found = {cid for cid, _ in keyword}
            dense = [(cid, s) for cid, s in dense if cid in found]
        scores: dict[str, float] = {}
        dense_of = dict(dense)
        keyword_of = dict(keyword)
        for weight, ranking in ((w_dense, dense), (1.0 - w_dense, keyword)):
            if not ranking:
                continue
            if self.config.fusion == "rrf":
                c = self.config.rrf_k
                for rank, (cid, _) in enumerate(ranking):
                    scores[cid] = scores.get(cid, 0.0) + weight / (c + rank + 1)
            else:
                best = ranking[0][1]
                for cid, score in ranking:
                    share = score / best if best > 0 else 0.0
                    scores[cid] = scores.get(cid, 0.0) + weight * share
        order = sorted(scores, key=lambda cid: -scores[cid])
        return [_Ranked(cid, dense_of.get(cid), keyword_of.get(cid), scores[cid]) for cid in order]

    def _english_only_on_cjk(self, query: str) -> bool:
        return has_cjk(query) and not is_multilingual(self.embedder.model_id)

    def _dense_weight(self, query: str) -> float:
        if self._english_only_on_cjk(query):
            return self.config.cjk_dense_weight
        return self.config.dense_weight

    def _resolve(self, kb: KnowledgeBase, ranked: list[_Ranked]) -> list[Passage]:
        """Keep hits whose chunk the catalog records (chunk rows exist only for committed
        versions, so vectors a crash left behind are never cited); text and span come from it."""
        known = self.catalog.resolve_chunks(kb.id, [r.id for r in ranked])
        out = []
        for r in ranked:
            entry = known.get(r.id)
            if entry is None:
                continue
            chunk, document_name = entry
            out.append(
                Passage(chunk_id=chunk.id, document_id=chunk.document_id,
                        document_name=document_name,
                        text=chunk.text, start=chunk.start, end=chunk.end, page=chunk.page,
                        score=r.fused, dense_score=r.dense, keyword_score=r.keyword)
            )
        return out
