"""Keyword search: a BM25 index beside the vector store, Chinese-aware.

Text is tokenized (``stores.tokens``: jieba's words for Chinese, English stems for Latin-script
words) and the tokens are kept in an SQLite FTS5 table; a plain table maps chunk ids
and document ids to its rows (FTS5 cannot index an id column: a delete by id was a scan of
the whole table, so indexing a knowledge base took time quadratic in its size, and deleting a
document from 100,000 chunks took 99 ms). A search ranks the rows by BM25 in memory
(``stores.bm25``: FTS5's scores, 0.84-1.11 ms where FTS5's ``bm25()`` took 10.5 ms over
25,915 rows), read from the file on the first search (or by ``warm``, when the API server
starts), or from the snapshot a long read left beside it, and kept up to date with every
write after, this process's or another's. The index lives in one SQLite file per knowledge
base, written by the same pipeline step as the vectors and deleted with them. The file's
``user_version`` names the tokenization its tokens were made with; an index written by an
earlier one is converted when it is opened.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from stores.base import Filter, matches
from stores.bm25 import Postings, terms_of
from stores.errors import StoreUnavailable
from stores.tokens import TOKENIZER_VERSION, stem, tokenize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeywordHit:
    """``score`` is BM25 (higher is better); ``coverage`` the share of query terms present."""

    id: str
    score: float
    coverage: float
    metadata_json: str

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Parsed when asked for: a hybrid search reads only ids, scores and coverage."""
        meta: dict[str, Any] = json.loads(self.metadata_json)
        return meta


class KeywordIndex:
    """BM25 over one knowledge base's chunks, persisted in an SQLite FTS5 file."""

    SNAPSHOT_AFTER_S = 0.25  # a read of the rows longer than this writes a snapshot

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._memory: Postings | None = None  # the rows for BM25, read on the first search
        self._stamp: tuple[int, int] | None = None
        self._writes = 0
        self._seen = 0  # the highest row id in _memory
        # BM25's rows as arrays, written after a long read of the rows and read back in
        # a later process instead (25,915 rows: 0.04 s against 1.2 s)
        self.snapshot = self.path.with_name(self.path.name + ".bm25.npz")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5("
                "tokens, id UNINDEXED, metadata UNINDEXED, "
                "tokenize='unicode61 remove_diacritics 2')"
            )
            # The highest row id ever given: ids are not reused, so a search that kept the
            # rows in memory knows an id it has seen still holds the same tokens.
            self._db.execute("CREATE TABLE IF NOT EXISTS rid_high(top INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS file_id(id TEXT NOT NULL)")
            self._db.commit()
            self._upgrade()
            self._map_ids()
            self._map_documents()
            self._file_id = self._identify()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open keyword index {self.path}: {exc}") from exc

    def _migrate(self, done: Callable[[], bool], apply: Callable[[], None]) -> None:
        """Run ``apply`` unless ``done()``: checked first without a write lock (the usual
        case: nothing to do), then again under ``BEGIN IMMEDIATE``, so one process migrates
        the file and the others wait, then find it done."""
        if done():
            return
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if not done():
                apply()

    def _upgrade(self) -> None:
        """Bring tokens written by an earlier tokenization up to this one, in place: each
        version so far is the one before with every token mapped, so no text is needed."""

        def convert() -> None:
            if self._version() == 0:
                rows = self._db.execute("SELECT rowid, tokens FROM chunks").fetchall()
                if rows:
                    logger.info("keyword index %s: converting %d entries to stemmed tokens",
                                self.path, len(rows))
                self._db.executemany(
                    "UPDATE chunks SET tokens = ? WHERE rowid = ?",
                    [(" ".join(stem(t) for t in tokens.split()), rowid)
                     for rowid, tokens in rows])
            self._db.execute(f"PRAGMA user_version = {TOKENIZER_VERSION}")

        self._migrate(lambda: self._version() >= TOKENIZER_VERSION, convert)

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _map_ids(self) -> None:
        """Create the id -> row table; an index written before it had one gets it filled."""

        def create() -> None:
            self._db.execute("CREATE TABLE chunk_ids("
                             "rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE)")
            self._db.execute("INSERT INTO chunk_ids(rid, id) SELECT rowid, id FROM chunks")

        self._migrate(lambda: self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'chunk_ids'").fetchone() is not None,
            create)

    def _map_documents(self) -> None:
        """Give the id table a document column; an index written before it had one gets it
        filled from the entries' metadata."""

        def add() -> None:
            self._db.execute("ALTER TABLE chunk_ids ADD COLUMN doc TEXT")
            self._db.execute(
                "UPDATE chunk_ids SET doc = (SELECT json_extract(metadata, '$.document_id') "
                "FROM chunks WHERE chunks.rowid = chunk_ids.rid)")
            self._db.execute("CREATE INDEX chunk_ids_doc ON chunk_ids(doc)")

        self._migrate(lambda: any(
            col[1] == "doc"
            for col in self._db.execute("PRAGMA table_info(chunk_ids)").fetchall()), add)

    def _identify(self) -> str:
        """This file's random id, given once: a snapshot of another file at the same path (a
        knowledge base deleted and made again) is not this one's."""
        query = "SELECT id FROM file_id LIMIT 1"

        def name() -> None:
            self._db.execute("INSERT INTO file_id(id) VALUES (?)", (uuid.uuid4().hex,))

        self._migrate(lambda: self._db.execute(query).fetchone() is not None, name)
        return str(self._db.execute(query).fetchone()[0])

    def _highest_rid(self) -> int:
        """The highest row id ever given in this file (files from before ``rid_high``: the
        highest there is)."""
        return int(self._db.execute(
            "SELECT max((SELECT coalesce(max(rid), 0) FROM chunk_ids), "
            "coalesce((SELECT rowid FROM chunks ORDER BY rowid DESC LIMIT 1), 0), "
            "(SELECT coalesce(max(top), 0) FROM rid_high))").fetchone()[0])

    # Rows go in and out with one statement per table over a JSON array, not executemany, and
    # come back as one JSON array, not a row at a time: each row is a step that lets go of the
    # GIL and must take it back, and while another thread runs Python (an ingestion's
    # tokenizers and model thread) each taking-back can wait out the interpreter's 5 ms
    # switch interval. Writing cmrc2018-dev's 848 passages while one other thread spun took
    # 5.9-6.1 s by executemany and 0.20 s this way (0.08-0.09 s and 0.10 s with no other thread).

    def _rids(self, where: str, arg: str) -> list[int]:
        """The rows of ``chunk_ids`` matching ``where`` (one ``?``: ``arg``)."""
        (rows,) = self._db.execute(
            f"SELECT json_group_array(rid) FROM chunk_ids WHERE {where}", (arg,)).fetchone()
        return [int(r) for r in json.loads(rows)]

    def _rows_of(self, ids: Sequence[str]) -> list[int]:
        return self._rids("id IN (SELECT value FROM json_each(?))", json.dumps(list(ids)))

    def _remove_rows(self, rids: Sequence[int]) -> None:
        if not rids:
            return
        rows = json.dumps(list(rids))
        self._db.execute("DELETE FROM chunks WHERE rowid IN (SELECT value FROM json_each(?))",
                         (rows,))
        self._db.execute("DELETE FROM chunk_ids WHERE rid IN (SELECT value FROM json_each(?))",
                         (rows,))

    @staticmethod
    def tokens_of(texts: Sequence[str]) -> list[str]:
        """What the index stores for each text: its tokens, joined by spaces; in any thread."""
        return [" ".join(tokenize(text)) for text in texts]

    def upsert(self, items: Sequence[tuple[str, str, dict[str, Any]]],
               tokens: Sequence[str] | None = None) -> None:
        """Index ``(id, text, metadata)`` items, replacing earlier entries with the same id
        (and, within ``items``, earlier items with the same id). ``tokens``: ``tokens_of``
        the items' texts, when the caller made them beforehand (in another thread)."""
        if tokens is None:
            tokens = self.tokens_of([text for _, text, _ in items])
        latest = {cid: (toks, json.dumps(meta), meta.get("document_id"))
                  for (cid, _, meta), toks in zip(items, tokens, strict=True)}
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._remove_rows(self._rows_of(list(latest)))
            self._writes += 1
            top = self._highest_rid()
            rows = [(top + n, terms, cid, meta, doc)
                    for n, (cid, (terms, meta, doc)) in enumerate(latest.items(), start=1)]
            payload = json.dumps(rows, ensure_ascii=False)
            self._db.execute(
                "INSERT INTO chunk_ids(rid, id, doc) SELECT json_extract(value, '$[0]'), "
                "json_extract(value, '$[2]'), json_extract(value, '$[4]') FROM json_each(?)",
                (payload,))
            self._db.execute(
                "INSERT INTO chunks(rowid, tokens, id, metadata) SELECT "
                "json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)",
                (payload,))
            self._db.execute("DELETE FROM rid_high")
            self._db.execute("INSERT INTO rid_high(top) VALUES (?)", (top + len(rows),))

    def delete(self, ids: Sequence[str]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._writes += 1
            self._remove_rows(self._rows_of(list(ids)))

    def delete_document(self, document_id: str) -> None:
        """Delete every entry whose metadata names ``document_id``."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._writes += 1
            self._remove_rows(self._rids("doc = ?", document_id))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def search(self, query: str, k: int, filter: Filter | None = None) -> list[KeywordHit]:
        """The ``k`` best entries for ``query`` by BM25; ``coverage``: the share of the
        query's terms an entry holds."""
        terms = list(dict.fromkeys(terms_of(" ".join(tokenize(query)))))
        if not terms:
            return []
        limit = k if filter is None else max(k * 10, 100)
        with self._lock:
            best = self._postings().top(terms, limit)
            if not best:
                return []
            (found,) = self._db.execute(
                "SELECT json_group_object(rowid, json_array(id, metadata)) FROM chunks "
                "WHERE rowid IN (SELECT value FROM json_each(?))",
                (json.dumps([rid for rid, _, _ in best]),)).fetchone()
        columns = json.loads(found)
        hits: list[KeywordHit] = []
        for rid, score, held in best:
            entry = columns.get(str(rid))
            if entry is None:  # removed by another process since the ranking
                continue
            cid, meta_json = entry
            hit = KeywordHit(cid, score, held / len(terms), meta_json)
            if filter is not None and not matches(filter, hit.metadata):
                continue
            hits.append(hit)
            if len(hits) == k:
                break
        return hits

    def warm(self) -> None:
        """Read the rows into memory now, not at the first search (25,915 SciFact rows:
        1.2 s)."""
        with self._lock:
            self._postings()

    def refresh(self) -> None:
        """Bring the rows in memory up to date with the file now, if they are in memory
        (another process wrote: the next search would read its rows); else nothing."""
        with self._lock:
            if self._memory is not None:
                self._postings()

    def _postings(self) -> Postings:
        """The rows in memory as they are in the file now (under ``_lock``): read whole
        the first time, then brought up to date, whether this process wrote since or another
        did (``data_version`` counts the others' writes, ``_writes`` ours). Row ids only
        grow and are never reused, so the rows added are those past the highest id seen, and
        an id seen before holds the same tokens; removed rows, if the count says there are
        any, are found by listing the ids (25,915 rows: 5 ms)."""
        stamp = (self._db.execute("PRAGMA data_version").fetchone()[0], self._writes)
        postings = self._memory
        if postings is not None and stamp == self._stamp:
            return postings
        if postings is None:
            postings = self._read_snapshot()
            if postings is not None:
                loaded = postings.live
                changed = self._update(postings)
                if changed > max(1000, loaded // 10):  # much has changed since it was written
                    self._write_snapshot(postings)
        else:
            self._update(postings)
        if postings is None or postings.dead > max(postings.live, 1000):
            started = time.perf_counter()
            postings = Postings()  # first use, or mostly removed rows: read all again
            cursor = self._db.execute("SELECT rowid, tokens FROM chunks")
            self._seen = 0
            while rows := cursor.fetchmany(4096):
                postings.add(rows)
                self._seen = max(self._seen, *(rid for rid, _ in rows))
            postings.merge()
            if time.perf_counter() - started > self.SNAPSHOT_AFTER_S:
                self._write_snapshot(postings)
        self._memory, self._stamp = postings, stamp
        return postings

    def _update(self, postings: Postings) -> int:
        """Bring ``postings`` up to the file; how many rows it added or removed."""
        added = self._db.execute("SELECT rowid, tokens FROM chunks WHERE rowid > ?",
                                 (self._seen,)).fetchall()
        postings.add(added)
        self._seen = max([self._seen, *(rid for rid, _ in added)])
        (count,) = self._db.execute("SELECT count(*) FROM chunk_ids").fetchone()
        removed: set[int] = set()
        if count != postings.live:
            (listed,) = self._db.execute("SELECT json_group_array(rid) FROM chunk_ids").fetchone()
            removed = postings.ids() - set(json.loads(listed))
            postings.remove(removed)
        return len(added) + len(removed)

    def _read_snapshot(self) -> Postings | None:
        """The snapshot, if it is this file's, of this tokenization, and readable."""
        try:
            with np.load(self.snapshot, allow_pickle=False) as saved:
                arrays = dict(saved)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a cache: damaged (truncated, not a zip), it is not used
            logger.warning("keyword index %s: snapshot %s not read (%s): reading the rows",
                           self.path, self.snapshot, exc)
            return None
        try:
            if (str(arrays["file_id"]) != self._file_id
                    or int(arrays["version"]) != TOKENIZER_VERSION):
                return None
            if self._highest_rid() < int(arrays["seen"]):  # older: put back from a backup
                return None
            postings = Postings.from_arrays(arrays)
        except (KeyError, ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
            logger.warning("keyword index %s: snapshot %s not used (%s): reading the rows",
                           self.path, self.snapshot, exc)
            return None
        self._seen = int(arrays["seen"])
        return postings

    def _write_snapshot(self, postings: Postings) -> None:
        """Write the snapshot beside the file (whole or not at all); a failure only costs
        the next process the long read."""
        partial = self.snapshot.with_name(f"{self.snapshot.name}.{uuid.uuid4().hex}.tmp")
        try:
            arrays: dict[str, Any] = {
                "file_id": np.array(self._file_id), "version": np.array(TOKENIZER_VERSION),
                "seen": np.array(self._seen), **postings.arrays()}
            with open(partial, "wb") as out:
                np.savez(out, **arrays)
            os.replace(partial, self.snapshot)
        except OSError as exc:
            logger.warning("keyword index %s: snapshot not written: %s", self.path, exc)
            partial.unlink(missing_ok=True)

    def drop(self) -> None:
        with self._lock, self._db:
            self._writes += 1
            self._db.execute("DELETE FROM chunks")
            self._db.execute("DELETE FROM chunk_ids")
            self.snapshot.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()
