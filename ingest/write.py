"""Writing an ingestion's groups of chunked files: vectors and keywords to the stores, then
the chunks to the catalog; a failure fails the group's files and keeps their old versions."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.catalog import Catalog, ChunkInfo, Document, KnowledgeBase
from ingest.chunking import Chunk
from ingest.types import ADDED, FAILED, REPLACED, FileResult, Indexes, chunk_id
from stores.base import Record
from stores.errors import RagError


@dataclass
class SourceFile:
    """A file of an ingestion: where it is, its document id and what was read of it."""

    path: Path
    source: str
    doc_id: str
    data_sha: str
    size: int
    mime: str


@dataclass
class PreparedFile(SourceFile):
    """A file chunked, waiting for its vectors (its text is no longer kept). ``tokens``:
    its chunks' keyword tokens, when the worker process made them."""

    chunks: list[Chunk]
    metadata: dict[str, object]
    existing: Document | None
    tokens: list[str] | None = None


class GroupWriter:
    """Writes groups of prepared files into one catalog and a knowledge base's indexes."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def fail(
        self, kb: KnowledgeBase, doc_id: str, name: str, source: str, mime: str, size: int,
        exc: RagError,
    ) -> FileResult:
        """Record a file as failed with ``exc``'s message; its result."""
        self.catalog.fail_document(doc_id, kb.id, name, source, mime or "unknown", size,
                                   f"{exc.type}: {exc.message}")
        return FileResult(name, source, FAILED, 0, doc_id, exc.message)

    def write(
        self, kb: KnowledgeBase, indexes: Indexes, group: list[PreparedFile],
        embedding: Future[np.ndarray], tokens: Future[list[str]],
    ) -> list[FileResult]:
        """Write a group's chunks to the stores, then record them in the catalog, with one
        call per index and one transaction per step; a store failure fails the group's files
        and leaves their previous versions as they were."""
        try:
            vectors = embedding.result()
        except RagError as exc:
            return [self.fail(kb, p.doc_id, p.path.name, p.source, p.mime, p.size, exc)
                    for p in group]
        ids = {p.doc_id: [chunk_id(p.doc_id, c) for c in p.chunks] for p in group}
        old_ids = self.catalog.chunk_ids_of(list(ids))
        self.catalog.begin_documents(
            [(p.doc_id, kb.id, p.path.name, p.source, p.mime, p.size) for p in group])
        records: list[Record] = []
        keywords: list[tuple[str, str, dict[str, object]]] = []
        for p in group:
            start = len(records)
            for cid, vec, c in zip(ids[p.doc_id], vectors[start : start + len(p.chunks)],
                                   p.chunks, strict=True):
                meta = chunk_metadata(p.doc_id, p.path.name, c)
                records.append(Record(cid, vec, c.text, meta))
                keywords.append((cid, c.indexed_text, meta))
        new = sorted({r.id for r in records} - {c for v in old_ids.values() for c in v})
        try:
            indexes.vectors.upsert(records)
            indexes.keywords.upsert(keywords, tokens.result())
            stale = sorted({c for d, v in old_ids.items() for c in set(v) - set(ids[d])})
            if stale:
                indexes.vectors.delete(ids=stale)
                indexes.keywords.delete(stale)
        except RagError as exc:
            self._undo_partial(indexes, new)
            for p in group:
                self.catalog.restore_document(p.doc_id)
            return [self.fail(kb, p.doc_id, p.path.name, p.source, p.mime, p.size, exc)
                    for p in group]
        self.catalog.finish_documents([
            (p.doc_id, p.data_sha, p.mime, p.size, p.metadata,
             [ChunkInfo(cid, p.doc_id, c.ordinal, c.text, c.start, c.end, c.page, c.token_count)
              for cid, c in zip(ids[p.doc_id], p.chunks, strict=True)])
            for p in group
        ])
        return [FileResult(p.path.name, p.source,
                           REPLACED if p.existing is not None and p.existing.chunk_count
                           else ADDED, len(p.chunks), p.doc_id) for p in group]

    @staticmethod
    def _undo_partial(indexes: Indexes, new_ids: list[str]) -> None:
        try:
            if new_ids:
                indexes.vectors.delete(ids=new_ids)
                indexes.keywords.delete(new_ids)
        except RagError:
            pass  # the store is down; reconcile() finishes the cleanup on the next start


def chunk_metadata(doc_id: str, name: str, chunk: Chunk) -> dict[str, object]:
    meta: dict[str, object] = {
        "document_id": doc_id,
        "document_name": name,
        "ordinal": chunk.ordinal,
        "start": chunk.start,
        "end": chunk.end,
    }
    if chunk.page is not None:
        meta["page"] = chunk.page
    return meta
