"""The catalog's SQL plumbing: the engine, the bulk writes of an ingestion's rows, and the
typed records made from rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, case, create_engine, event, func, insert, literal, select, update
from sqlalchemy.orm import Session

from ingest.catalog.models import ChunkRow, DocumentRow, JobRow
from ingest.catalog.records import ChunkInfo, Document, Job, KnowledgeBase


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite with foreign keys on, WAL, and a 10 s busy timeout."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    # Bulk INSERTs (a list of rows) go as multi-row VALUES statements, as SQLAlchemy already
    # sends them when they return rows, not as executemany (see ``insert_rows``).
    if engine.dialect.use_insertmanyvalues:
        engine.dialect.use_insertmanyvalues_wo_returning = True
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

    return engine


# Bound parameters per statement in ``update_rows``: under SQLite's oldest limit (999).
_MAX_PARAMS = 900


# The bulk writes go as multi-row statements, a few per group, not executemany: each row of an
# executemany is a database step that lets go of the GIL and must take it back, and while
# another thread runs Python (an ingestion's tokenizers, the model thread) each taking-back
# can wait out the interpreter's 5 ms switch interval. Recording cmrc2018-dev's 848 documents
# and 2,544 chunks while one other thread spun took 8.6 s by executemany (0.06 s alone).

def existing_documents(s: Session, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` are documents: one counting step when none or all are (the usual
    cases), the ids themselves otherwise."""
    if not ids:
        return set()
    table = DocumentRow.__table__
    count = s.scalar(select(func.count()).select_from(table).where(table.c.id.in_(ids)))
    if not count:
        return set()
    if count == len(set(ids)):
        return set(ids)
    return set(s.scalars(select(table.c.id).where(table.c.id.in_(ids))))


def insert_rows(s: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (dicts with the same keys): multi-row VALUES statements, batched by
    SQLAlchemy's "insertmanyvalues" (turned on without RETURNING in ``open_engine``)."""
    if rows:
        s.execute(insert(table), rows)


def update_rows(s: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """UPDATE rows by ``id`` (dicts with the same keys), a batch per statement: a value that
    differs between rows is a CASE on the id, in its simple form (``CASE id WHEN ... THEN``,
    one expression less per row than ``CASE WHEN id = ...``: 848 documents' four differing
    columns took 41 ms instead of 68 ms on 2 cores, most of it SQLAlchemy building them)."""
    if not rows:
        return
    columns = [k for k in rows[0] if k != "id"]
    per = max(1, _MAX_PARAMS // (2 * len(columns) + 1))
    for at in range(0, len(rows), per):
        part = rows[at : at + per]
        values: dict[str, Any] = {}
        for c in columns:
            column = table.c[c]
            first = part[0][c]
            if all(r[c] == first for r in part):
                values[c] = literal(first, column.type)
            else:
                values[c] = case({r["id"]: literal(r[c], column.type) for r in part},
                                 value=table.c.id)
        s.execute(update(table).where(table.c.id.in_([r["id"] for r in part])).values(values))


def kb_record(row: Any, documents: int = 0, chunks: int = 0) -> KnowledgeBase:
    """From an ORM row or a plain one (the same column names)."""
    return KnowledgeBase(
        id=row.id, name=row.name, description=row.description,
        embedding_model=row.embedding_model, embedding_dim=row.embedding_dim,
        store_url=row.store_url, chunking=dict(row.chunking), created_at=row.created_at,
        document_count=documents, chunk_count=chunks,
    )


def document_record(row: DocumentRow) -> Document:
    return Document(
        id=row.id, kb_id=row.kb_id, name=row.name, source=row.source, sha256=row.sha256,
        mime_type=row.mime_type, size=row.size, status=row.status, error=row.error,
        chunk_count=row.chunk_count, metadata=dict(row.meta or {}), created_at=row.created_at,
        updated_at=row.updated_at,
    )


def chunk_record(row: ChunkRow) -> ChunkInfo:
    return ChunkInfo(
        id=row.id, document_id=row.document_id, ordinal=row.ordinal, text=row.text,
        start=row.start, end=row.end, page=row.page, token_count=row.token_count,
    )


def job_record(row: JobRow) -> Job:
    return Job(
        id=row.id, kb_id=row.kb_id, kind=row.kind, status=row.status,
        files_total=row.files_total, files_done=row.files_done,
        files_skipped=row.files_skipped, files_failed=row.files_failed,
        chunks_written=row.chunks_written, errors=list(row.errors or []),
        created_at=row.created_at, updated_at=row.updated_at,
    )
