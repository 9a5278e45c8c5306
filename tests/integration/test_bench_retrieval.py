"""``bench.retrieval``'s own pipeline row on a three-passage set: the packaged embedder, the
bare encode beside it, and the hybrid+rerank row a CrossEncoder adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.retrieval import ours
from rag.evaluation import load_dataset
from tests.tiny_llm import build_tiny_cross_encoder


def test_a_rerank_model_adds_the_hybrid_rerank_row(tmp_path: Path, mini_dataset: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_tiny_cross_encoder(tmp_path / "cross-encoder")
    dataset = load_dataset(mini_dataset)
    questions = dataset.sample(None)
    row = ours(dataset, questions, tmp_path / "work", "torch", rerank_model=str(model))
    assert list(row["modes"]) == ["dense", "keyword", "hybrid", "hybrid+rerank"]
    for metrics in row["modes"].values():
        assert {"recall@5", "mrr@10", "ndcg@10", "p50_ms"} <= set(metrics)
    # Three passages: every row finds each gold one within its ten, reranked or not.
    assert row["modes"]["hybrid+rerank"]["recall@10"] == 1.0
    assert row["chunks"] == 3 and row["bare_encode_seconds"] >= 0
    plain = ours(dataset, questions, tmp_path / "plain", "torch")
    assert "hybrid+rerank" not in plain["modes"]
