"""The SQL catalog of knowledge bases, documents, chunks and jobs."""

from ingest.catalog.catalog import Catalog
from ingest.catalog.records import (
    DOC_FAILED,
    DOC_INDEXED,
    DOC_INDEXING,
    DOC_QUEUED,
    JOB_DONE,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    ChunkInfo,
    Document,
    Job,
    KnowledgeBase,
)

__all__ = [
    "DOC_FAILED",
    "DOC_INDEXED",
    "DOC_INDEXING",
    "DOC_QUEUED",
    "JOB_DONE",
    "JOB_FAILED",
    "JOB_QUEUED",
    "JOB_RUNNING",
    "Catalog",
    "ChunkInfo",
    "Document",
    "Job",
    "KnowledgeBase",
]
