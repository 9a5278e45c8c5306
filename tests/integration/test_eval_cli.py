"""``rag eval`` as users run it: the packaged embedder, a small dataset, table and JSON."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import app
from tests.tiny_llm import build_tiny_cross_encoder


def test_rag_eval_command(tmp_path: Path, mini_dataset: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = mini_dataset
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    first = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini", "--mode",
                                "keyword", "--k", "1,3", "--json"])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["questions"] == 3 and report["mode"] == "keyword"
    assert report["retrieval"]["recall@1"] == 1.0 and report["retrieval"]["mrr@10"] == 1.0
    assert report["ingest"]["documents"] == 3 and not report["ingest"]["reused"]
    assert report["rerank"] is None  # no rerank model configured
    again = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini"])
    assert again.exit_code == 0, again.output
    assert "recall@5" in again.output and "hybrid" in again.output
    bad = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini", "--k", "x"])
    assert bad.exit_code == 2 and "--k takes integers" in bad.output
    no_model = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini", "--rerank"])
    assert no_model.exit_code == 2 and "RAG_RETRIEVAL__RERANK_MODEL" in no_model.output


def test_rag_eval_names_the_reranker(tmp_path: Path, mini_dataset: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny_cross_encoder(tmp_path / "cross-encoder")
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAG_RETRIEVAL__RERANK_MODEL", str(model))
    runner = CliRunner()
    reranked = runner.invoke(app, ["eval", "--dataset", str(mini_dataset), "--kb", "mini"])
    assert reranked.exit_code == 0, reranked.output
    words = " ".join(reranked.output.split())  # the terminal's width wraps the lines
    assert "mode hybrid+rerank · 3 questions" in words
    assert f"reranked by {model} (--no-rerank" in reranked.output.replace("\n", "")
    first_stage = runner.invoke(app, ["eval", "--dataset", str(mini_dataset), "--kb", "mini",
                                      "--no-rerank", "--json"])
    assert first_stage.exit_code == 0, first_stage.output
    assert json.loads(first_stage.output)["rerank"] is None
    # Each command closed its engine: no model, reranker or keyword-search thread is left.
    ours = ("rag-model", "rag-rerank", "rag-bm25")
    assert not [t.name for t in threading.enumerate() if t.name.startswith(ours)]
