"""The keyword index: tokens (stems, Chinese words), BM25 search, and upgrading an index
written by an earlier tokenization."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from stores.keyword import TOKENIZER_VERSION, KeywordIndex, tokenize


def test_tokens_are_stemmed_english_and_unchanged_chinese() -> None:
    assert tokenize("Running shoes ran") == ["run", "shoe", "ran"]
    assert tokenize("The studies") == ["studi"]  # stop word dropped, then stemmed
    assert tokenize("café naïve") == ["café", "naïv"]
    assert "退款" in tokenize("如何申请退款") and "申请" in tokenize("如何申请退款")
    assert tokenize("COVID19 in 2020") == ["covid19", "2020"]  # not words: as they are


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
