"""Reranking with a sentence-transformers CrossEncoder: a tiny random one built in the test
(real loading and scoring code; the order it gives is checked against its own scores)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from rag.engine import RAG
from rag.evaluation import evaluate, load_dataset
from rag.rerank import CrossEncoderReranker
from stores.errors import InvalidInput, ModelUnavailable
from tests.conftest import SAMPLES, make_settings
from tests.helpers import ExtractiveGenerator, HashEmbedder
from tests.tiny_llm import build_tiny_cross_encoder


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


def make_rag(tmp_path: Path, **retrieval: object) -> RAG:
    # Small chunks, so the samples give the reranker more candidates than it keeps.
    settings = make_settings(tmp_path, retrieval={"min_score": -1.0, **retrieval},
                             chunking={"chunk_size": 120, "chunk_overlap": 10})
    rag = RAG(settings, generator=ExtractiveGenerator(), embedder=HashEmbedder())
    rag.ingest([p for p in SAMPLES.iterdir() if p.suffix in (".md", ".html")])
    return rag


def test_reranker_orders_the_candidates_by_its_scores(tmp_path: Path, cross_encoder: Path
                                                      ) -> None:
    rag = make_rag(tmp_path, rerank_model=str(cross_encoder), rerank_candidates=6)
    question = "How much is an adult ticket at the observatory?"
    first_stage = rag.search(question, top_k=6, rerank=False).passages
    reranked = rag.search(question, top_k=3).passages
    assert len(first_stage) == 6 and len(reranked) == 3
    # Scored independently with the same model: the reranked list is its top 3, in order.
    independent = CrossEncoderReranker(str(cross_encoder))
    scores = independent.scores(question, [p.text for p in first_stage])
    independent.close()
    expected = [p.chunk_id for _, p in sorted(zip(scores, first_stage, strict=True),
                                              key=lambda sp: -sp[0])][:3]
    assert [p.chunk_id for p in reranked] == expected
    assert all(p.rerank_score == p.score for p in reranked)
    assert [p.score for p in reranked] == sorted((p.score for p in reranked), reverse=True)
    assert all(p.rerank_score is None for p in first_stage)
    # The answer path reranks too: it cites from the reranked passages.
    answer = rag.ask(question, top_k=3)
    assert {p.chunk_id for p in answer.passages} <= set(expected)
    ours = ("rag-rerank", "rag-bm25")
    assert any(t.name.startswith(ours) for t in threading.enumerate())
    rag.close()  # stops the reranker's model thread and the keyword-search threads
    assert not [t.name for t in threading.enumerate() if t.name.startswith(ours)]


def test_rerank_needs_a_model(tmp_path: Path) -> None:
    rag = make_rag(tmp_path)
    with pytest.raises(InvalidInput, match="RERANK_MODEL"):
        rag.search("tickets", rerank=True)
    assert rag.search("tickets").passages  # no model, no reranking: still retrieves
    rag.close()


def test_missing_rerank_model_is_a_clear_error(tmp_path: Path) -> None:
    rag = make_rag(tmp_path, rerank_model=str(tmp_path / "no-such-model"))
    with pytest.raises(ModelUnavailable, match="RAG_RETRIEVAL__RERANK_MODEL"):
        rag.search("tickets")
    rag.close()


def test_evaluation_says_whether_it_reranked(tmp_path: Path, cross_encoder: Path,
                                             mini_dataset: Path) -> None:
    """``rag eval`` figures with a rerank model configured are reranked ones, and say so;
    ``rerank=False`` measures the first stage alone."""
    settings = make_settings(tmp_path, retrieval={"rerank_model": str(cross_encoder)})
    rag = RAG(settings, generator=ExtractiveGenerator(), embedder=HashEmbedder())
    reranker = rag.retriever.reranker
    assert reranker is not None
    calls: list[str] = []
    rerank = reranker.rerank

    def counted(query: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(query)
        return rerank(query, *args, **kwargs)

    reranker.rerank = counted  # type: ignore[method-assign]
    dataset = load_dataset(mini_dataset)
    reranked = evaluate(rag, dataset, "mini", "hybrid", (1, 3), answers=1)
    assert reranked.rerank == str(cross_encoder) and reranked.to_dict()["rerank"]
    # Every sampled question and the answered and unanswerable ones went through the reranker.
    asked = [q.question for q in dataset.sample(None)]
    assert set(asked) <= set(calls) and "Who built the pyramids?" in calls
    calls.clear()
    first_stage = evaluate(rag, dataset, "mini", "hybrid", (1, 3), rerank=False, answers=1)
    assert first_stage.rerank is None and not calls
    assert first_stage.ingest["reused"]
    rag.close()
    plain = RAG(make_settings(tmp_path / "plain"), generator=ExtractiveGenerator(),
                embedder=HashEmbedder())
    with pytest.raises(InvalidInput, match="RAG_RETRIEVAL__RERANK_MODEL"):
        evaluate(plain, dataset, "mini", rerank=True)
    assert evaluate(plain, dataset, "mini").rerank is None
    plain.close()
