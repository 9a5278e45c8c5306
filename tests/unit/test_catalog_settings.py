from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ingest.catalog import Catalog
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
