"""The keyword index: tokens (stems, Chinese words), BM25 search, and upgrading an index
written by an earlier tokenization."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from stores import tokens
from stores.base import Eq
from stores.keyword import KeywordIndex
from stores.tokens import STOP_WORDS, TOKENIZER_VERSION, stem, tokenize


def test_tokens_are_stemmed_english_and_unchanged_chinese() -> None:
    assert tokenize("Running shoes ran") == ["run", "shoe", "ran"]
    assert tokenize("The studies") == ["studi"]  # stop word dropped, then stemmed
    assert tokenize("café naïve") == ["café", "naïv"]
    assert "退款" in tokenize("如何申请退款") and "申请" in tokenize("如何申请退款")
    assert tokenize("COVID19 in 2020") == ["covid19", "2020"]  # not words: as they are


def test_chinese_tokens_are_search_mode_words_and_characters() -> None:
    tokens = tokenize("小明硕士毕业于中国科学院计算所")
    # jieba's search mode: the long word and the dictionary words inside it
    for word in ("中国科学院", "中国", "科学院", "学院", "计算所", "计算", "硕士", "毕业"):
        assert word in tokens
    assert {"科", "院", "算"} <= set(tokens)  # and every character
    # Latin letters and digits inside Chinese text: the query and the passage agree
    assert set(tokenize("2.4km")) <= set(tokenize("全程2.4km，建于1958-1965年"))
    assert {"1958", "1965"} <= set(tokenize("全程2.4km，建于1958-1965年"))


def _reference_tokens(text: str) -> list[str]:
    """The tokenization spelled out a word at a time, as ``tokenize`` computed it before
    its terms were cached."""
    if tokens.has_cjk(text):
        pieces = tokens._segmenter()(text, True) + re.findall(
            r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]", text)
        words = re.findall(r"\w+", " ".join(pieces).lower())
    else:
        words = re.findall(r"\w+", text.lower())
    return [stem(w) for w in words
            if w not in STOP_WORDS and not (len(w) == 1 and w.isascii())]


@pytest.mark.parametrize("limit", [3, 200_000])
def test_cached_terms_give_the_tokens_of_a_word_at_a_time(
        monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(tokens, "_TERMS", tokens._Terms())
    monkeypatch.setattr(tokens._Terms, "limit", limit)
    texts = ["The Studies of running shoes, ran_fast in 2020: café naïve Ölfeld İstanbul",
             "如何申请退款？我的订单的状态是什么，2.4km 的 Running 鞋",
             "小明硕士毕业于中国科学院计算所, a 的 I 是 x_y",
             "中文\ufa6e字 \u9fff"]  # unassigned code points in the Chinese ranges
    for _ in range(2):  # words met before, and new
        for text in texts:
            assert tokenize(text) == _reference_tokens(text)
    assert len(tokens._TERMS) <= limit
    assert "的" not in tokenize(texts[1]) and "订单" in tokenize(texts[1])


def test_search_matches_other_forms_of_a_word(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "kw.sqlite")
    index.upsert([("a", "She runs marathons in light shoes.", {"document_id": "d1"}),
                  ("b", "A recipe for tomato soup.", {"document_id": "d2"})])
    hits = index.search("running shoe", 5)
    assert [h.id for h in hits] == ["a"]
    assert hits[0].coverage == 1.0
    index.close()


def _old_index(path: Path) -> None:
    """A keyword file as tokenization 0 wrote it: lower-cased words, no stems."""
    db = sqlite3.connect(path)
    db.execute("CREATE VIRTUAL TABLE chunks USING fts5(tokens, id UNINDEXED, metadata UNINDEXED, "
               "tokenize='unicode61 remove_diacritics 2')")
    db.executemany("INSERT INTO chunks(tokens, id, metadata) VALUES (?,?,?)", [
        ("runs marathons light shoes", "a", json.dumps({"document_id": "d1"})),
        ("recipe tomato soup", "b", json.dumps({"document_id": "d2"})),
    ])
    db.commit()
    db.close()


def test_coverage_counts_whole_tokens_and_a_filter_reads_the_metadata(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "kw.sqlite")
    index.upsert([("a", "Categories of shoes.", {"document_id": "d1", "n": 1}),
                  ("b", "A cat sleeps on shoes.", {"document_id": "d2", "n": 2})])
    hits = {h.id: h for h in index.search("cat shoes", 5)}
    assert hits["b"].coverage == 1.0
    assert hits["a"].coverage == 0.5  # "categori" holds "cat", but is another token
    assert hits["a"].metadata == {"document_id": "d1", "n": 1}
    assert [h.id for h in index.search("cat shoes", 5, Eq("n", 1))] == ["a"]
    index.close()


def test_an_index_written_before_stemming_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "kw.sqlite"
    _old_index(path)
    index = KeywordIndex(path)
    assert [h.id for h in index.search("running shoe", 5)] == ["a"]
    assert [h.id for h in index.search("tomatoes", 5)] == ["b"]
    assert index.count() == 2
    index.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == TOKENIZER_VERSION
    assert db.execute("SELECT tokens FROM chunks WHERE id = 'a'").fetchone()[0] == (
        "run marathon light shoe")
    db.close()
    # opening it again changes nothing: the version guards against stemming twice
    KeywordIndex(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT tokens FROM chunks WHERE id = 'a'").fetchone()[0] == (
        "run marathon light shoe")
    db.close()


def test_entries_are_replaced_and_deleted_by_id(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "kw.sqlite")
    index.upsert([("a", "red apples", {"document_id": "d1"}),
                  ("b", "green pears", {"document_id": "d1"}),
                  ("c", "yellow bananas", {"document_id": "d2"}),
                  ("c", "purple plums", {"document_id": "d2"})])  # the later one wins
    assert index.count() == 3
    assert index.search("bananas", 5) == [] and [h.id for h in index.search("plums", 5)] == ["c"]
    index.upsert([("a", "blue berries", {"document_id": "d1"})])
    assert index.count() == 3 and index.search("apples", 5) == []
    assert [h.id for h in index.search("berries", 5)] == ["a"]
    index.delete(["b", "nowhere"])
    assert index.count() == 2 and index.search("pears", 5) == []
    index.delete_document("d1")
    assert [h.id for h in index.search("berries plums", 5)] == ["c"]
    index.upsert([("a", "red apples again", {"document_id": "d1"})])
    assert sorted(h.id for h in index.search("apples plums", 5)) == ["a", "c"]
    index.drop()
    assert index.count() == 0
    index.upsert([("a", "red apples", {"document_id": "d1"})])
    assert index.count() == 1
    index.close()


def test_an_index_written_without_the_id_table_gets_one_on_open(tmp_path: Path) -> None:
    path = tmp_path / "kw.sqlite"
    _old_index(path)
    index = KeywordIndex(path)
    index.upsert([("a", "slow walks", {"document_id": "d1"})])  # replaces the old "a"
    assert index.count() == 2
    assert index.search("marathons", 5) == [] and [h.id for h in index.search("walk", 5)] == ["a"]
    index.delete(["b"])
    assert index.count() == 1 and index.search("tomato", 5) == []
    index.close()
    index = KeywordIndex(path)  # a second open finds the table and leaves it
    assert [h.id for h in index.search("walking", 5)] == ["a"] and index.count() == 1
    index.close()


def test_an_index_written_without_the_document_column_gets_it_on_open(tmp_path: Path) -> None:
    path = tmp_path / "kw.sqlite"
    _old_index(path)
    db = sqlite3.connect(path)  # the id table as the release before the document column had it
    db.execute("CREATE TABLE chunk_ids(rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE)")
    db.execute("INSERT INTO chunk_ids(rid, id) SELECT rowid, id FROM chunks")
    db.commit()
    db.close()
    index = KeywordIndex(path)
    index.upsert([("c", "tomato salad", {"document_id": "d2"})])
    db = sqlite3.connect(path)
    assert db.execute("SELECT id, doc FROM chunk_ids ORDER BY id").fetchall() == [
        ("a", "d1"), ("b", "d2"), ("c", "d2")]
    plan = db.execute("EXPLAIN QUERY PLAN SELECT rid FROM chunk_ids WHERE doc = 'd2'").fetchall()
    assert "chunk_ids_doc" in str(plan)  # a document's delete is a lookup, not a scan
    db.close()
    index.delete_document("d2")  # old and new entries alike
    assert index.count() == 1 and index.search("tomato", 5) == []
    index.delete_document("d1")
    assert index.count() == 0
    index.close()


def test_a_batch_is_written_and_removed_in_a_few_statements(tmp_path: Path) -> None:
    """Not one executemany step per row: each step lets go of the GIL and must take it back,
    which costs up to the 5 ms switch interval while another thread runs Python."""
    index = KeywordIndex(tmp_path / "k.db")
    steps: list[str] = []

    class Counted:  # the connection, counting the steps asked of it from Python
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            steps.append(sql)
            return self.db.execute(sql, *args)

        def executemany(self, sql: str, rows: list[object]) -> sqlite3.Cursor:
            steps.extend([sql] * len(rows))
            return self.db.executemany(sql, rows)

        def __enter__(self) -> sqlite3.Connection:
            return self.db.__enter__()

        def __exit__(self, *exc: object) -> object:
            return self.db.__exit__(*exc)

    index._db = Counted(index._db)  # type: ignore[assignment]
    items = [(f"c{i}", f"passage {i} about harbour number{i}", {"document_id": f"d{i % 50}"})
             for i in range(500)]
    index.upsert(items)
    index.upsert(items[:200])  # replaced
    index.delete([f"c{i}" for i in range(400, 450)])
    index.delete_document("d3")
    assert len(steps) < 40
    assert index.count() == 500 - 50 - 9  # d3 held c3, c53, ..., c453, c403 already gone
    assert [h.id for h in index.search("number7", 5)] == ["c7"]
    assert index.search("number403", 5) == [] and index.search("number53", 5) == []
