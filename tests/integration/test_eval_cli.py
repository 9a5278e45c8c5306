"""``rag eval`` as users run it: the packaged embedder, a small dataset, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import app


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
    again = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini"])
    assert again.exit_code == 0, again.output
    assert "recall@5" in again.output and "hybrid" in again.output
    bad = runner.invoke(app, ["eval", "--dataset", str(data), "--kb", "mini", "--k", "x"])
    assert bad.exit_code == 2 and "--k takes integers" in bad.output
