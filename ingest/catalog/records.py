"""Typed values the catalog returns (never ORM objects, never untyped dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DOC_QUEUED = "queued"
DOC_INDEXING = "indexing"
DOC_INDEXED = "indexed"
DOC_FAILED = "failed"

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"


@dataclass(frozen=True)
class KnowledgeBase:
    id: int
    name: str
    description: str
    embedding_model: str
    embedding_dim: int
    store_url: str
    chunking: dict[str, Any]
    created_at: datetime
    document_count: int = 0
    chunk_count: int = 0


@dataclass(frozen=True)
class Document:
    id: str
    kb_id: int
    name: str
    source: str
    sha256: str
    mime_type: str
    size: int
    status: str
    error: str | None
    chunk_count: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ChunkInfo:
    id: str
    document_id: str
    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    token_count: int


@dataclass(frozen=True)
class Job:
    id: str
    kb_id: int | None
    kind: str
    status: str
    files_total: int
    files_done: int
    files_skipped: int
    files_failed: int
    chunks_written: int
    errors: list[dict[str, str]] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
