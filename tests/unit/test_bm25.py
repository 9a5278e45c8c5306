"""BM25 in memory: FTS5's scores and order, kept up to date with writes from this process
and from others, and row ids that are never given twice."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from bench.keyword import fts5_search
from bench.keyword import same_ranking as bench_ranking
from stores.bm25 import Postings, terms_of
from stores.keyword import KeywordIndex
from stores.tokens import tokenize
from tests.helpers import keyword_reads

WORDS = [f"w{i}" for i in range(400)] + ["café", "naïve", "max_tokens", "hôtel", "cafe",
                                         "退款", "申请", "订单", "发票", "时间"]


def corpus(n: int, seed: int = 7) -> list[tuple[str, str, dict[str, str]]]:
    """Rows of Zipf-distributed words (a few common, many rare), some accented, some joined
    by ``_``, some Chinese, each row its own document."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(WORDS))]
    rows = []
    for i in range(n):
        words = rng.choices(WORDS, weights, k=rng.randint(3, 60))
        rows.append((f"c{i}", " ".join(words), {"document_id": f"d{i}"}))
    return rows


def queries(n: int, seed: int = 11) -> list[str]:
    """Not ``max_tokens``: FTS5 searches it as a phrase, ``max`` then ``tokens``, where the
    in-memory index takes them as two terms (``test_accents_and_underscores...``)."""
    rng = random.Random(seed)
    special = [w for w in WORDS[400:] if "_" not in w]
    return [" ".join(rng.sample(WORDS[:120], rng.randint(1, 6)) + rng.sample(special, 1))
            for _ in range(n)]


def same_ranking(index: KeywordIndex, query: str, k: int) -> None:
    """Our search ranks as FTS5's own ``bm25()`` over the same file, the reference."""
    assert bench_ranking(index.search(query, k), fts5_search(index, query, k)), query


def test_scores_and_order_are_fts5s(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "kw.sqlite")
    index.upsert(corpus(1500))
    for q in queries(60):
        same_ranking(index, q, 20)
    index.close()


def test_accents_and_underscores_are_read_as_fts5_reads_them() -> None:
    assert terms_of("café max_tokens 退款") == ["cafe", "max", "tokens", "退款"]
    assert terms_of("naïv hôtel") == ["naiv", "hotel"]
    postings = Postings()
    postings.add([(1, "café au lait"), (2, "cafe noir"), (3, "max_tokens limit")])
    assert {rid for rid, _, _ in postings.top(terms_of("cafe"), 5)} == {1, 2}
    assert [rid for rid, _, _ in postings.top(terms_of("token"), 5)] == []
    assert [(rid, held) for rid, _, held in postings.top(terms_of("tokens max"), 5)] == [(3, 2)]


def test_writes_here_are_searched_at_once(tmp_path: Path) -> None:
    rows = corpus(800)
    index = KeywordIndex(tmp_path / "kw.sqlite")
    index.upsert(rows[:500])
    q = queries(20)
    for query in q:  # the rows are read into memory
        same_ranking(index, query, 10)
    index.upsert(rows[500:])  # added
    replaced = [(cid, "w399 w398 " + text, meta) for cid, text, meta in rows[:50]]
    index.upsert(replaced)
    index.delete([cid for cid, _, _ in rows[100:160]])
    index.delete_document("d300")
    for query in [*q, "w399 w398", "w0"]:
        same_ranking(index, query, 10)
    # brought up to date, not read again: 50 replaced and 61 removed rows are dead
    assert index._memory is not None and index._memory.live == 800 - 60 - 1
    assert index._memory.dead == 50 + 61
    assert {h.id for h in index.search("w399 w398", 60)} >= {cid for cid, _, _ in rows[:50]}
    index.drop()
    assert index.search("w0", 5) == []
    index.close()


def test_writes_from_another_connection_are_searched_at_once(tmp_path: Path) -> None:
    """Another process (or another ``KeywordIndex`` on the file) writes: this one sees it."""
    path = tmp_path / "kw.sqlite"
    reader, writer = KeywordIndex(path), KeywordIndex(path)
    writer.upsert([("a", "red apples", {"document_id": "d1"}),
                   ("b", "green pears", {"document_id": "d2"})])
    assert [h.id for h in reader.search("pears", 5)] == ["b"]
    # the last row removed, and another written: its row id must not be b's again
    writer.delete_document("d2")
    writer.upsert([("c", "yellow bananas", {"document_id": "d3"})])
    assert reader.search("pears", 5) == []
    assert [h.id for h in reader.search("bananas", 5)] == ["c"]
    writer.upsert([("a", "blue berries", {"document_id": "d1"})])
    assert reader.search("apples", 5) == [] and [h.id for h in reader.search("berry", 5)] == ["a"]
    rows = corpus(300)
    writer.upsert(rows)
    for query in queries(10):
        same_ranking(reader, query, 10)
    reader.close()
    writer.close()


def test_row_ids_are_never_given_twice(tmp_path: Path) -> None:
    path = tmp_path / "kw.sqlite"
    index = KeywordIndex(path)
    index.upsert([("a", "one", {"document_id": "d1"}), ("b", "two", {"document_id": "d2"})])
    index.delete_document("d2")
    index.upsert([("b", "three", {"document_id": "d2"})])
    index.upsert([("b", "four", {"document_id": "d2"})])  # replaces the row it just wrote
    index.drop()
    index.upsert([("z", "five", {"document_id": "d9"})])
    db = sqlite3.connect(path)
    assert db.execute("SELECT rowid FROM chunks").fetchall() == [(5,)]
    db.close()
    index.close()


def test_mostly_removed_rows_are_read_again(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "kw.sqlite")
    rows = corpus(3000)
    index.upsert(rows)
    index.search("w1", 5)
    first = index._memory
    index.delete([cid for cid, _, _ in rows[:2500]])
    for query in queries(10):
        same_ranking(index, query, 10)
    assert index._memory is not first and index._memory is not None
    assert index._memory.dead == 0 and index._memory.live == 500
    index.close()


def test_many_small_writes_keep_few_segments() -> None:
    """An ingestion searched between its batches: one segment per batch would make every
    query look in hundreds; merging them all each time would copy the index each batch."""
    rows = [(int(cid[1:]) + 1, " ".join(tokenize(text))) for cid, text, _ in corpus(2000)]
    small, whole = Postings(), Postings()
    for i in range(0, len(rows), 10):
        small.add(rows[i : i + 10])
    whole.add(rows)
    assert small.segments <= 8 and whole.segments == 1
    for query in queries(20):
        terms = list(dict.fromkeys(terms_of(" ".join(tokenize(query)))))
        assert small.top(terms, 10) == whole.top(terms, 10)


def test_a_row_removed_between_ranking_and_reading_is_left_out(tmp_path: Path) -> None:
    """Another process deletes a document after the ranking in memory was brought up to date
    and before the hits' columns are read: the hit is dropped, not an error."""
    path = tmp_path / "kw.sqlite"
    index, other = KeywordIndex(path), KeywordIndex(path)
    index.upsert([("a", "red apples", {"document_id": "d1"}),
                  ("b", "red cherries", {"document_id": "d2"})])
    ranked = index._postings

    def ranked_then_removed() -> Postings:
        postings = ranked()
        other.delete_document("d2")
        return postings

    index._postings = ranked_then_removed  # type: ignore[method-assign]
    assert [h.id for h in index.search("red", 5)] == ["a"]
    index._postings = ranked  # type: ignore[method-assign]
    assert [h.id for h in index.search("red cherries", 5)] == ["a"]
    index.close()
    other.close()


def test_a_snapshot_spares_the_next_process_the_read(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeywordIndex, "SNAPSHOT_AFTER_S", 0.0)  # any read writes one
    path = tmp_path / "kw.sqlite"
    rows = corpus(900)
    first = KeywordIndex(path)
    first.upsert(rows[:600])
    first.warm()
    assert first.snapshot.exists()
    first.upsert(rows[600:700])  # after the snapshot: this process ...
    first.delete([cid for cid, _, _ in rows[:40]])
    first.close()
    other = KeywordIndex(path)  # ... and another
    other.upsert(rows[700:])
    other.delete_document("d650")
    other.close()
    reads = keyword_reads(monkeypatch)
    index = KeywordIndex(path)
    for query in queries(20):
        same_ranking(index, query, 10)
    assert reads == [299]  # the rows added since the snapshot (100 + 200 - 1), not all 859
    assert index._memory is not None and index._memory.live == 900 - 40 - 1
    index.drop()
    assert not index.snapshot.exists() and index.search("w1", 5) == []
    index.close()


def test_a_snapshot_of_another_file_or_a_damaged_one_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeywordIndex, "SNAPSHOT_AFTER_S", 0.0)
    path = tmp_path / "kw.sqlite"
    index = KeywordIndex(path)
    index.upsert([("a", "red apples", {"document_id": "d1"})])
    index.warm()
    index.close()
    kept = path.with_name("kept.npz")
    kept.write_bytes(index.snapshot.read_bytes())
    for f in tmp_path.glob("kw.sqlite*"):  # the knowledge base deleted, made again
        f.unlink()
    index = KeywordIndex(path)
    index.upsert([("b", "green pears", {"document_id": "d2"})])
    index.close()
    index.snapshot.write_bytes(kept.read_bytes())  # the old file's snapshot, at the path
    index = KeywordIndex(path)
    assert index.search("apples", 5) == [] and [h.id for h in index.search("pears", 5)] == ["b"]
    index.close()
    whole = index.snapshot.read_bytes()
    for damaged in (b"not a snapshot", whole[: len(whole) // 2]):  # not a zip; cut short
        index.snapshot.write_bytes(damaged)
        index = KeywordIndex(path)
        assert [h.id for h in index.search("pears", 5)] == ["b"]  # read from the rows instead
        index.close()
    assert KeywordIndex(path).search("green", 5)[0].id == "b"  # from the snapshot written again


def test_a_snapshot_newer_than_its_file_is_not_used(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The file put back from a backup, its snapshot left from after: rows removed since the
    backup are back in the file, and must be found again."""
    monkeypatch.setattr(KeywordIndex, "SNAPSHOT_AFTER_S", 0.0)
    path = tmp_path / "kw.sqlite"
    rows = corpus(400)
    index = KeywordIndex(path)
    index.upsert(rows[:300])
    index.close()
    backup = tmp_path / "backup.sqlite"
    backup.write_bytes(path.read_bytes())
    index = KeywordIndex(path)
    index.delete([cid for cid, _, _ in rows[:100]])
    index.upsert(rows[300:])
    index.warm()
    index.close()
    path.write_bytes(backup.read_bytes())
    index = KeywordIndex(path)
    assert index.count() == 300
    for query in queries(20):
        same_ranking(index, query, 10)
    assert index._memory is not None and index._memory.live == 300
    index.close()
