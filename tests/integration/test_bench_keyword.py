"""``bench.keyword`` on real data: the in-memory BM25 ranks SciFact's 5,183 passages as
FTS5's ``bm25()`` does, for every question asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.keyword import DATA, run


@pytest.mark.skipif(not (DATA / "scifact-test").exists(), reason="../shared/data is absent")
def test_the_in_memory_ranking_is_fts5s_on_scifact(tmp_path: Path) -> None:
    row = run("scifact-test", 1, 40, tmp_path)
    assert row["rows"] == 5183 and row["questions"] == 40
    assert row["same_ranking"] == "40/40"
    assert row["memory_mb"] > 0 and row["ours_p50_ms"] > 0 and row["fts5_p50_ms"] > 0
    assert row["snapshot_mb"] > 0 and row["snapshot_read_s"] > 0
