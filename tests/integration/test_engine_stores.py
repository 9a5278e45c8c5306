"""The engine on every store by URL alone, and `rag kb migrate` between them."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import app
from rag.engine import RAG
from stores import open_store
from stores.base import Record
from stores.errors import Conflict, DimensionMismatch, InvalidInput
from tests.conftest import SAMPLES, make_settings
from tests.helpers import ExtractiveGenerator, HashEmbedder
from tests.unit.test_pipeline import assert_consistent

QUESTION = "How much is an adult ticket at the observatory?"


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path, dim: int = 64) -> str:
    tag = uuid.uuid4().hex[:8]
    if backend == "faiss":
        return f"faiss://{tmp_path}/faiss-{tag}?index=hnsw"
    if backend == "milvus-lite":
        return f"milvus://{tmp_path}/milvus.db?collection=kb_{tag}&index=IVF_FLAT&nlist=8"
    if backend == "milvus-server":
        host = request.getfixturevalue("milvus_server")
        return f"milvus://{host}?collection=kb_{tag}&index=IVF_SQ8&nlist=8"
    if backend == "chroma":
        return f"chroma://{tmp_path}/chroma?collection=kb-{tag}"
    if backend == "pinecone":
        host = request.getfixturevalue("pinecone_emulators").host(dim)
        return f"pinecone://rag?host={host}&namespace=kb-{tag}"
    raise AssertionError(backend)


def _engine(tmp_path: Path, store_url: str | None = None) -> RAG:
    settings = make_settings(tmp_path)
    rag = RAG(settings, generator=ExtractiveGenerator(), embedder=HashEmbedder())
    if store_url is not None:
        rag.create_kb("default", store_url)
    return rag


def _docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.py"))
    return folder


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RAG]:
    rag = _engine(tmp_path, _url(request.param, request, tmp_path))
    yield rag
    rag.close()


@pytest.mark.parametrize("engine", ["milvus-lite", "milvus-server", "chroma", "pinecone"],
                         indirect=True)
def test_engine_works_on_every_store(engine: RAG, tmp_path: Path) -> None:
    folder = _docs(tmp_path)
    report = engine.ingest([folder])
    assert len(report.added) == 5 and not report.failed
    n = assert_consistent(engine)
    again = engine.ingest([folder])
    assert again.chunks_written == 0 and len(again.unchanged) == 5
    top = engine.search(QUESTION, mode="dense", min_score=0.0).passages[0]
    assert top.document_name == "observatory-guide.md"
    answer = engine.ask(QUESTION)
    assert answer.citations and answer.citations[0].document_name == "observatory-guide.md"
    removed = engine.delete_document("observatory-guide.md")
    assert assert_consistent(engine) == n - removed.chunk_count
    assert all(p.document_name != "observatory-guide.md"
               for p in engine.search(QUESTION, mode="dense", min_score=0.0).passages)
    url = engine.get_kb("default").store_url
    engine.delete_kb("default")
    leftover = open_store(url)
    assert leftover.count() == 0
    leftover.drop()
    leftover.close()


def _top_ids(rag: RAG) -> list[str]:
    return [p.chunk_id for p in rag.search(QUESTION, mode="dense", min_score=0.0).passages]


def test_migrate_through_every_store_keeps_answers(request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    rag = _engine(tmp_path)
    rag.ingest([_docs(tmp_path)])
    n = assert_consistent(rag)
    before = _top_ids(rag)
    first_url = rag.get_kb("default").store_url
    for backend in ["milvus-lite", "chroma", "pinecone", "faiss"]:
        url = _url(backend, request, tmp_path)
        report = rag.migrate_kb("default", url, drop_source=True)
        assert report.copied == n and report.to_url == url
        assert rag.get_kb("default").store_url == url
        assert assert_consistent(rag) == n
        assert _top_ids(rag) == before, backend
    rag.close()
    assert not Path(first_url.split("://", 1)[1].split("?")[0]).exists(), "source dropped"
    reopened = _engine(tmp_path)  # a new process sees the switch through the catalog
    assert _top_ids(reopened) == before
    reopened.close()


def test_migrate_refuses_and_changes_nothing(request: pytest.FixtureRequest,
                                             tmp_path: Path) -> None:
    rag = _engine(tmp_path)
    rag.ingest([_docs(tmp_path)])
    original = rag.get_kb("default").store_url
    busy_url = _url("chroma", request, tmp_path)
    busy = open_store(busy_url)
    busy.upsert([Record("someone-else", HashEmbedder().embed_query("x"), "x")])
    with pytest.raises(Conflict, match="already holds 1"):
        rag.migrate_kb("default", busy_url)
    assert busy.count() == 1, "a non-empty target is left as it was"
    other_dim = _url("pinecone", request, tmp_path, dim=8)
    with pytest.raises(DimensionMismatch):
        rag.migrate_kb("default", other_dim)
    with pytest.raises(InvalidInput):
        rag.migrate_kb("default", original)
    assert rag.get_kb("default").store_url == original
    assert assert_consistent(rag) > 0
    busy.close()
    rag.close()


def test_migrate_failure_midway_rolls_back(request: pytest.FixtureRequest, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rag = _engine(tmp_path)
    rag.ingest([_docs(tmp_path)])
    original = rag.get_kb("default").store_url
    target_url = _url("milvus-lite", request, tmp_path)
    from stores import migrate

    real_copy = migrate.copy_records

    def copy_then_fail(*args: object, **kwargs: object) -> int:
        real_copy(*args, **kwargs)  # type: ignore[arg-type]
        raise Conflict("simulated failure after the copy")

    monkeypatch.setattr(migrate, "copy_records", copy_then_fail)
    with pytest.raises(Conflict, match="simulated"):
        rag.migrate_kb("default", target_url)
    assert rag.get_kb("default").store_url == original
    target = open_store(target_url)
    assert target.count() == 0, "the half-written target was dropped"
    target.close()
    assert assert_consistent(rag) > 0
    rag.close()


def test_cli_kb_migrate(request: pytest.FixtureRequest, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", str(_docs(tmp_path)), "--kb", "cli", "--json"])
    assert r.exit_code == 0, r.output
    url = _url("chroma", request, tmp_path)
    r = runner.invoke(app, ["kb", "migrate", "--kb", "cli", "--to", url, "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["copied"] > 0 and report["to_url"] == url
    r = runner.invoke(app, ["kb", "list", "--json"])
    assert json.loads(r.stdout)[0]["store_url"] == url
    r = runner.invoke(app, ["kb", "migrate", "--kb", "cli", "--to", "nosuch://x"])
    assert r.exit_code == 2 and "unknown vector store URL scheme" in r.stderr
