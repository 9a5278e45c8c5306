from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ingest.catalog import Catalog, ChunkInfo
from ingest.catalog.models import Base
from rag.settings import Settings
from stores.errors import Conflict, InvalidInput, NotFound


def test_migrations_match_the_models(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    Catalog(f"sqlite:///{tmp_path / 'c.db'}")  # re-opening an up-to-date database is a no-op


def test_kb_names_and_conflicts(tmp_path: Path) -> None:
    c = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    c.create_kb("docs-1", "m", 8, "faiss:///x", {})
    with pytest.raises(Conflict):
        c.create_kb("docs-1", "m", 8, "faiss:///x", {})
    for bad in ("", "../etc", "a b", "x" * 65):
        with pytest.raises(InvalidInput):
            c.create_kb(bad, "m", 8, "faiss:///x", {})
    with pytest.raises(NotFound, match="rag kb list"):
        c.get_kb("nope")


def test_settings_from_env_nested_and_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_RETRIEVAL__TOP_K", "9")
    monkeypatch.setenv("RAG_GENERATOR__OPENAI__API_KEY", "sk-secret")
    monkeypatch.setenv("RAG_DATABASE_URL", "postgresql://u:pw@db/rag")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.retrieval.top_k == 9
    shown = s.masked()
    assert shown["generator"]["openai"]["api_key"] == "**********"
    assert "pw" not in shown["database_url"] and "***" in shown["database_url"]
    assert "sk-secret" not in str(shown)


def test_settings_reject_unknown_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Settings(_env_file=None, retrieval={"top_kk": 3})  # type: ignore[call-arg]


def test_the_reads_of_a_search_match_the_full_records(tmp_path: Path) -> None:
    c = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    c.create_kb("docs", "m", 8, "faiss:///x", {"chunk_size": 250})
    full = c.get_kb("docs")
    a, b = c.create_kb("a", "m", 8, "faiss:///a", {}), c.create_kb("b", "m", 8, "faiss:///b", {})
    light = c.get_kb("docs", counts=False)
    assert light == full and isinstance(light.chunking, dict)
    with pytest.raises(NotFound, match="rag kb list"):
        c.get_kb("nope", counts=False)
    chunk = ChunkInfo("c1", "d1", 0, "text", 0, 4, None, 1)
    c.begin_documents([("d1", a.id, "one.txt", "/one.txt", "text/plain", 4)])
    c.finish_documents([("d1", "sha", "text/plain", 4, {}, [chunk])])
    assert c.resolve_chunks(a.id, ["c1", "nope"]) == {"c1": (chunk, "one.txt")}
    assert c.resolve_chunks(b.id, ["c1"]) == {}  # another knowledge base's chunk
    assert c.resolve_chunks(a.id, []) == {}


def test_timestamps_read_back_in_utc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from datetime import UTC, timedelta

    monkeypatch.setenv("TZ", "Asia/Shanghai")  # where a naive UTC time reads 8 hours off
    time.tzset()
    try:
        c = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
        made = c.create_kb("docs", "m", 8, "faiss:///x", {})
        assert made.created_at.tzinfo is not None
        read = c.get_kb("docs")
        assert read.created_at == made.created_at and read.created_at.utcoffset() == timedelta(0)
        assert c.get_kb("docs", counts=False).created_at == made.created_at
        assert abs(read.created_at.timestamp() - time.time()) < 60
        c.begin_documents([("d1", made.id, "one.txt", "/one.txt", "text/plain", 4)])
        doc = c.get_document(made.id, "d1")
        assert doc.created_at.tzinfo is UTC and doc.updated_at.tzinfo is UTC
        job = c.get_job(c.create_job("ingest", made.id, 1).id)
        assert job.created_at is not None and job.created_at.tzinfo is UTC
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_groups_rows_are_written_in_a_few_statements_with_their_values(tmp_path: Path) -> None:
    """Not one executemany step per row: each step lets go of the GIL and must take it back,
    which costs up to the 5 ms switch interval while another thread runs Python."""
    from sqlalchemy import event

    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    kb = catalog.create_kb("kb", "m", 8, "faiss:///x", {})
    statements: list[int] = []

    @event.listens_for(catalog.engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        # an executemany is a step per row; a multi-row VALUES batch has flat parameters
        rows = executemany and parameters and isinstance(parameters[0], tuple | list | dict)
        statements.append(len(parameters) if rows else 1)

    docs = [(f"d{i}", kb.id, f"n{i}.txt", f"s{i}", "text/plain", i) for i in range(300)]
    catalog.begin_documents(docs)
    catalog.finish_documents([
        (f"d{i}", f"sha{i}", "text/markdown", 10 + i, {"title": f"T{i}"},
         [ChunkInfo(f"d{i}:{j}", f"d{i}", j, f"text {i} {j}", j, j + 1, None, 3)
          for j in range(i % 3 + 1)])
        for i in range(300)])
    catalog.begin_documents([*docs[:100], ("d-new", kb.id, "new.txt", "s-new", "text/plain", 1)])
    assert sum(statements) < 40  # 300 documents, 600 chunks, 101 documents again
    d7 = catalog.get_document(kb.id, "d7")
    assert (d7.status, d7.sha256, d7.mime_type, d7.size, d7.metadata, d7.chunk_count) == (
        "indexing", "sha7", "text/markdown", 17, {"title": "T7"}, 2)  # begun again, kept
    d200 = catalog.get_document(kb.id, "d200")
    assert (d200.status, d200.sha256, d200.chunk_count) == ("indexed", "sha200", 3)
    assert d200.updated_at > d200.created_at
    assert catalog.get_document(kb.id, "d-new").status == "indexing"
    assert catalog.chunk_ids_of(["d2"]) == {"d2": ["d2:0", "d2:1", "d2:2"]}
