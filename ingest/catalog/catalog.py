"""The catalog: knowledge bases, documents, chunks and jobs in SQL (SQLite by default).

The schema is created and upgraded by Alembic when a ``Catalog`` opens the database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Connection,
    bindparam,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ingest.catalog.models import ChunkRow, DocumentRow, JobRow, KnowledgeBaseRow
from ingest.catalog.records import (
    DOC_FAILED,
    DOC_INDEXED,
    DOC_INDEXING,
    JOB_RUNNING,
    ChunkInfo,
    Document,
    Job,
    KnowledgeBase,
)
from ingest.catalog.sql import (
    chunk_record,
    document_record,
    existing_documents,
    insert_rows,
    job_record,
    kb_record,
    open_engine,
    update_rows,
)
from stores.errors import Conflict, InvalidInput, NotFound, StoreUnavailable

_KB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_MIGRATIONS = Path(__file__).parent / "migrations"


def validate_kb_name(name: str) -> str:
    if not _KB_NAME.match(name):
        raise InvalidInput(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


# What every search reads, built once: a statement built per call cost more than the query
# (resolving 13 chunk ids: 0.44 ms built per call in an ORM session, 0.13 ms prebuilt on a
# plain connection, 2 cores, SQLite).
_KB_NAMED = select(KnowledgeBaseRow.__table__).where(KnowledgeBaseRow.name == bindparam("name"))
_CHUNKS_RESOLVED = (
    select(ChunkRow.id, ChunkRow.document_id, ChunkRow.ordinal, ChunkRow.text, ChunkRow.start,
           ChunkRow.end, ChunkRow.page, ChunkRow.token_count, DocumentRow.name)
    .join(DocumentRow, ChunkRow.document_id == DocumentRow.id)
    .where(ChunkRow.id.in_(bindparam("ids", expanding=True)),
           DocumentRow.kb_id == bindparam("kb_id"))
)


class Catalog:
    """Catalog access. One instance per process; sessions are short and per call."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = open_engine(url)
            self.upgrade()
        except OperationalError as exc:
            raise StoreUnavailable(f"cannot open the catalog database {url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision``."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # -- knowledge bases --------------------------------------------------------------------

    def create_kb(
        self,
        name: str,
        embedding_model: str,
        embedding_dim: int,
        store_url: str,
        chunking: dict[str, Any],
        description: str = "",
    ) -> KnowledgeBase:
        validate_kb_name(name)
        try:
            with self._session() as s:
                row = KnowledgeBaseRow(
                    name=name, description=description, embedding_model=embedding_model,
                    embedding_dim=embedding_dim, store_url=store_url, chunking=chunking,
                )
                s.add(row)
                s.flush()
                return kb_record(row)
        except IntegrityError:
            raise Conflict(f"knowledge base {name!r} already exists") from None

    def get_kb(self, name: str, counts: bool = True) -> KnowledgeBase:
        """``counts=False`` leaves ``document_count`` and ``chunk_count`` at 0 and skips
        the two aggregate queries (a search needs the settings, not the totals)."""
        with self.engine.connect() as conn:
            row = conn.execute(_KB_NAMED, {"name": name}).first()
            if row is None:
                raise NotFound(f"knowledge base {name!r} does not exist (see `rag kb list`)")
            return kb_record(row, *self._kb_counts(conn, row.id)) if counts else kb_record(row)

    def list_kbs(self) -> list[KnowledgeBase]:
        with self._session() as s:
            rows = s.scalars(select(KnowledgeBaseRow).order_by(KnowledgeBaseRow.name)).all()
            return [kb_record(r, *self._kb_counts(s, r.id)) for r in rows]

    def update_kb(
        self, name: str, description: str | None = None, store_url: str | None = None
    ) -> KnowledgeBase:
        with self._session() as s:
            row = s.scalar(select(KnowledgeBaseRow).where(KnowledgeBaseRow.name == name))
            if row is None:
                raise NotFound(f"knowledge base {name!r} does not exist")
            if description is not None:
                row.description = description
            if store_url is not None:
                row.store_url = store_url
            s.flush()
            return kb_record(row, *self._kb_counts(s, row.id))

    def delete_kb(self, name: str) -> None:
        with self._session() as s:
            row = s.scalar(select(KnowledgeBaseRow).where(KnowledgeBaseRow.name == name))
            if row is None:
                raise NotFound(f"knowledge base {name!r} does not exist")
            s.delete(row)

    @staticmethod
    def _kb_counts(s: Session | Connection, kb_id: int) -> tuple[int, int]:
        docs = s.scalar(
            select(func.count()).select_from(DocumentRow).where(DocumentRow.kb_id == kb_id)
        )
        chunks = s.scalar(
            select(func.coalesce(func.sum(DocumentRow.chunk_count), 0)).where(
                DocumentRow.kb_id == kb_id, DocumentRow.status == DOC_INDEXED
            )
        )
        return int(docs or 0), int(chunks or 0)

    # -- documents ----------------------------------------------------------------------------

    def find_documents(self, kb_id: int, sources: Sequence[str]) -> dict[str, Document]:
        """The documents recorded under these sources, by source; one query per 500 (a
        query per file took 2 ms each, a quarter of ingestion's own work on SQuAD)."""
        found: dict[str, Document] = {}
        with self._session() as s:
            for i in range(0, len(sources), 500):
                rows = s.scalars(select(DocumentRow).where(
                    DocumentRow.kb_id == kb_id, DocumentRow.source.in_(sources[i : i + 500])))
                found.update((r.source, document_record(r)) for r in rows)
        return found

    def get_document(self, kb_id: int, doc_id: str) -> Document:
        with self._session() as s:
            row = s.get(DocumentRow, doc_id)
            if row is None or row.kb_id != kb_id:
                raise NotFound(f"document {doc_id!r} does not exist in this knowledge base")
            return document_record(row)

    def list_documents(
        self, kb_id: int, status: str | None = None, offset: int = 0, limit: int = 100
    ) -> list[Document]:
        with self._session() as s:
            q = select(DocumentRow).where(DocumentRow.kb_id == kb_id)
            if status is not None:
                q = q.where(DocumentRow.status == status)
            q = q.order_by(DocumentRow.name, DocumentRow.id).offset(offset).limit(limit)
            return [document_record(r) for r in s.scalars(q).all()]

    def documents_in_status(self, kb_id: int, statuses: Sequence[str]) -> list[Document]:
        with self._session() as s:
            q = select(DocumentRow).where(
                DocumentRow.kb_id == kb_id, DocumentRow.status.in_(list(statuses))
            )
            return [document_record(r) for r in s.scalars(q).all()]

    def begin_documents(self, docs: Sequence[tuple[str, int, str, str, str, int]]) -> None:
        """Mark documents ``(id, kb_id, name, source, mime, size)`` as being (re)indexed, in one
        transaction. Their previous chunks stay until ``finish_documents``.

        Both steps write a group's rows with a few multi-row statements (``insert_rows``,
        ``update_rows``), not one ORM object per row (squad-v2-dev's 1,204 documents, with
        an encode that costs nothing but its tokenizer: 1.44 s through the unit of work,
        1.18 s in bulk) nor one executemany step per row (below)."""
        with self._session() as s:
            ids = list(dict.fromkeys(d[0] for d in docs))
            known = existing_documents(s, ids)
            insert_rows(s, DocumentRow.__table__, [
                {"id": doc_id, "kb_id": kb_id, "name": name, "source": source, "sha256": "",
                 "mime_type": mime_type, "size": size, "status": DOC_INDEXING, "error": None,
                 "chunk_count": 0, "metadata": {}}
                for doc_id, kb_id, name, source, mime_type, size in docs
                if doc_id not in known])
            update_rows(s, DocumentRow.__table__, [
                {"id": doc_id, "status": DOC_INDEXING, "error": None}
                for doc_id in ids if doc_id in known])

    def finish_documents(
        self, docs: Sequence[tuple[str, str, str, int, dict[str, Any], Sequence[ChunkInfo]]]
    ) -> None:
        """Replace the chunks of documents ``(id, sha256, mime, size, metadata, chunks)`` and mark
        them indexed, in one transaction: all are indexed together, or none is."""
        with self._session() as s:
            ids = [d[0] for d in docs]
            missing = sorted(set(ids) - existing_documents(s, ids))
            if missing:
                raise NotFound(f"document {missing[0]!r} vanished while it was being indexed")
            s.query(ChunkRow).filter(ChunkRow.document_id.in_(ids)).delete()
            insert_rows(s, ChunkRow.__table__, [
                {"id": c.id, "document_id": doc_id, "ordinal": c.ordinal, "text": c.text,
                 "start": c.start, "end": c.end, "page": c.page, "token_count": c.token_count}
                for doc_id, *_, infos in docs for c in infos])
            update_rows(s, DocumentRow.__table__, [
                {"id": doc_id, "sha256": sha256, "mime_type": mime_type, "size": size,
                 "metadata": metadata, "status": DOC_INDEXED, "error": None,
                 "chunk_count": len(infos)}
                for doc_id, sha256, mime_type, size, metadata, infos in docs])

    def fail_document(
        self, doc_id: str, kb_id: int, name: str, source: str, mime_type: str, size: int,
        error: str,
    ) -> Document:
        """Record a failure. A previously indexed version stays indexed and searchable."""
        with self._session() as s:
            row = _get_or_add_document(s, doc_id, kb_id, name, source, mime_type, size)
            has_chunks = s.scalar(
                select(func.count()).select_from(ChunkRow).where(ChunkRow.document_id == doc_id)
            )
            row.status = DOC_INDEXED if has_chunks else DOC_FAILED
            row.error = error if not has_chunks else f"last update failed: {error}"
            s.flush()
            return document_record(row)

    def restore_document(self, doc_id: str) -> None:
        """After an interrupted re-index: back to indexed if old chunks remain, else removed."""
        with self._session() as s:
            row = s.get(DocumentRow, doc_id)
            if row is None:
                return
            if row.chunk_count and row.sha256:
                row.status = DOC_INDEXED
            else:
                s.delete(row)

    def discard_chunks(self, doc_id: str) -> None:
        """Forget a document's chunks and content hash (its vectors are already gone)."""
        with self._session() as s:
            row = s.get(DocumentRow, doc_id)
            if row is None:
                return
            s.query(ChunkRow).filter(ChunkRow.document_id == doc_id).delete()
            row.chunk_count, row.sha256 = 0, ""

    def delete_document(self, doc_id: str) -> None:
        with self._session() as s:
            row = s.get(DocumentRow, doc_id)
            if row is not None:
                s.delete(row)

    def chunk_ids_of(self, doc_ids: Sequence[str]) -> dict[str, list[str]]:
        """Chunk ids per document, for several documents in one query."""
        out: dict[str, list[str]] = {d: [] for d in doc_ids}
        with self._session() as s:
            q = select(ChunkRow.document_id, ChunkRow.id).where(
                ChunkRow.document_id.in_(list(doc_ids)))
            for doc_id, cid in s.execute(q):
                out[doc_id].append(cid)
        return out

    def chunk_ids(self, doc_id: str) -> list[str]:
        return self.chunk_ids_of([doc_id])[doc_id]

    def kb_chunk_ids(self, kb_id: int) -> list[str]:
        """Every chunk id the catalog records for a knowledge base, sorted."""
        with self._session() as s:
            q = (select(ChunkRow.id).join(DocumentRow, ChunkRow.document_id == DocumentRow.id)
                 .where(DocumentRow.kb_id == kb_id).order_by(ChunkRow.id))
            return list(s.scalars(q))

    def list_chunks(self, doc_id: str, offset: int = 0, limit: int = 1000) -> list[ChunkInfo]:
        with self._session() as s:
            q = (select(ChunkRow).where(ChunkRow.document_id == doc_id)
                 .order_by(ChunkRow.ordinal).offset(offset).limit(limit))
            return [chunk_record(r) for r in s.scalars(q).all()]

    def resolve_chunks(self, kb_id: int, ids: Sequence[str]) -> dict[str, tuple[ChunkInfo, str]]:
        """The indexed chunks among ``ids`` with their documents' names (unknown ids are left
        out). Every search calls this: plain rows from a prebuilt statement."""
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(_CHUNKS_RESOLVED, {"ids": list(ids), "kb_id": kb_id})
            return {r[0]: (ChunkInfo(*r[:8]), r[8]) for r in rows}

    def chunk_total(self, kb_id: int) -> int:
        with self._session() as s:
            n = s.scalar(
                select(func.count()).select_from(ChunkRow)
                .join(DocumentRow, ChunkRow.document_id == DocumentRow.id)
                .where(DocumentRow.kb_id == kb_id)
            )
            return int(n or 0)

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, kind: str, kb_id: int | None, files_total: int,
                   status: str = JOB_RUNNING) -> Job:
        with self._session() as s:
            row = JobRow(
                id=uuid.uuid4().hex, kb_id=kb_id, kind=kind, status=status,
                files_total=files_total, files_done=0, files_skipped=0, files_failed=0,
                chunks_written=0, errors=[],
            )
            s.add(row)
            s.flush()
            return job_record(row)

    def update_job(
        self, job_id: str, *, done: int = 0, skipped: int = 0, failed: int = 0, chunks: int = 0,
        error: tuple[str, str] | None = None, status: str | None = None,
        errors: Sequence[tuple[str, str]] = (),
    ) -> Job:
        """Add to a job's counters, append per-file errors, or set its status."""
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist")
            row.files_done += done
            row.files_skipped += skipped
            row.files_failed += failed
            row.chunks_written += chunks
            added = [*errors, *([error] if error is not None else [])]
            if added:
                row.errors = [*row.errors, *({"file": f, "error": e} for f, e in added)]
            if status is not None:
                row.status = status
            s.flush()
            return job_record(row)

    def start_job(self, job_id: str, files_total: int) -> Job:
        """Mark a queued job running and (re)start its counters (a resumed job counts anew)."""
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist")
            row.status, row.files_total = JOB_RUNNING, files_total
            row.files_done = row.files_skipped = row.files_failed = row.chunks_written = 0
            row.errors = []
            s.flush()
            return job_record(row)

    def jobs_in_status(self, statuses: Sequence[str]) -> list[Job]:
        with self._session() as s:
            rows = s.scalars(select(JobRow).where(JobRow.status.in_(list(statuses)))).all()
            return [job_record(r) for r in rows]

    def get_job(self, job_id: str) -> Job:
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist")
            return job_record(row)


def _get_or_add_document(
    s: Session, doc_id: str, kb_id: int, name: str, source: str, mime_type: str, size: int
) -> DocumentRow:
    row = s.get(DocumentRow, doc_id)
    if row is None:
        row = _new_document(doc_id, kb_id, name, source, mime_type, size)
        s.add(row)
    return row


def _new_document(
    doc_id: str, kb_id: int, name: str, source: str, mime_type: str, size: int
) -> DocumentRow:
    return DocumentRow(id=doc_id, kb_id=kb_id, name=name, source=source, sha256="",
                       mime_type=mime_type, size=size, status=DOC_INDEXING, chunk_count=0,
                       meta={})
