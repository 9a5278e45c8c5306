"""What an ingestion shares with its callers: the files it takes (``expand_paths``), the ids
it gives (``document_id``, ``chunk_id``), the indexes it writes and the model their vectors
must come from (``Indexes``, ``check_embedder``), and what it reports (``FileResult``,
``IngestReport``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingest.catalog import KnowledgeBase
from ingest.chunking import Chunk
from ingest.embedding import Embedder
from stores.base import VectorStore
from stores.errors import DimensionMismatch
from stores.keyword import KeywordIndex

ADDED, REPLACED, UNCHANGED, FAILED = "added", "replaced", "unchanged", "failed"


@dataclass
class Indexes:
    """Where one knowledge base's chunks are searchable."""

    vectors: VectorStore
    keywords: KeywordIndex


@dataclass(frozen=True)
class FileResult:
    name: str
    source: str
    status: str  # added | replaced | unchanged | failed
    chunks: int = 0
    document_id: str | None = None
    error: str | None = None


@dataclass
class IngestReport:
    results: list[FileResult] = field(default_factory=list)
    job_id: str | None = None

    def _named(self, status: str) -> list[str]:
        return [r.name for r in self.results if r.status == status]

    @property
    def added(self) -> list[str]:
        return self._named(ADDED)

    @property
    def replaced(self) -> list[str]:
        return self._named(REPLACED)

    @property
    def unchanged(self) -> list[str]:
        return self._named(UNCHANGED)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def chunks_written(self) -> int:
        return sum(r.chunks for r in self.results if r.status in (ADDED, REPLACED))


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under the given files and folders (recursive, sorted, hidden entries skipped)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield p


def document_id(kb_id: int, source: str) -> str:
    return hashlib.sha256(f"{kb_id}\0{source}".encode()).hexdigest()[:32]


def chunk_id(doc_id: str, chunk: Chunk) -> str:
    return hashlib.sha256(f"{doc_id}\0{chunk.ordinal}\0{chunk.text}".encode()).hexdigest()[:32]


def model_family(model_id: str) -> str:
    """A model's name without its folder or backend tag: ``/x/all-MiniLM-L6-v2`` and
    ``sentence-transformers/all-MiniLM-L6-v2`` are one model; ONNX runs keep the id."""
    return model_id.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower()


def check_embedder(kb: KnowledgeBase, embedder: Embedder) -> None:
    """Vectors of one knowledge base come from one model: another model's vectors (even of
    the same size) would be compared with them as if they meant the same."""
    if embedder.dim != kb.embedding_dim or (
            model_family(embedder.model_id) != model_family(kb.embedding_model)):
        raise DimensionMismatch(
            f"knowledge base {kb.name!r} holds {kb.embedding_dim}-d vectors from "
            f"{kb.embedding_model}, but the configured embedder is {embedder.model_id} "
            f"({embedder.dim}-d); configure the same model or create a new knowledge base"
        )
