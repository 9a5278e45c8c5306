"""The ingestion pipeline: files -> text -> chunks -> vectors + keywords -> catalog.

Idempotent by construction: a document's id derives from (knowledge base, source) and a
chunk's id from (document, ordinal, text), so re-running any step writes the same keys.
Order per document: mark it ``indexing`` in the catalog, write vectors and keywords, delete
the stale chunks of its previous version, then record the chunks and mark it ``indexed``
in one transaction. ``reconcile`` repairs whatever a crash left between those steps.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.catalog import (
    DOC_INDEXED,
    DOC_INDEXING,
    Catalog,
    Document,
    KnowledgeBase,
)
from ingest.catalog.records import JOB_DONE
from ingest.chunking import Chunker
from ingest.config import ChunkingConfig, IngestConfig
from ingest.embedding import Embedder
from ingest.loaders import mime_type_for
from ingest.prepare import Failure, Prepared, PrepareWorker, prepare_files
from ingest.types import (
    ADDED,
    FAILED,
    REPLACED,
    UNCHANGED,
    FileResult,
    Indexes,
    IngestReport,
    check_embedder,
    document_id,
    expand_paths,
)
from ingest.write import GroupWriter, PreparedFile, SourceFile
from stores.base import Eq
from stores.errors import InvalidInput, PayloadTooLarge, RagError

log = logging.getLogger(__name__)

_GROUP_CHUNKS = 1024  # chunks embedded together: length-sorted batches waste less on padding
_FIRST_GROUP_CHUNKS = 64  # the first group: the model starts after a few files
_LAST_GROUP_CHUNKS = 256  # the smallest of the groups that shrink toward the end
_LOOKAHEAD_FILES = 64  # files parsed ahead, to tokenize their texts in one call for chunking
_LOOKAHEAD_BYTES = 4_000_000  # ... or fewer, when they are large


@dataclass
class _Read(SourceFile):
    """A file read (new or changed), waiting for its parsing and chunking."""

    data: bytes
    existing: Document | None


class IngestPipeline:
    """Ingests files into one knowledge base's indexes and records them in the catalog."""

    def __init__(self, catalog: Catalog, embedder: Embedder, config: IngestConfig) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.config = config
        self.writer = GroupWriter(catalog)
        self._workers: list[PrepareWorker] = []
        self._workers_lock = threading.Lock()

    def _prepare_workers(self) -> list[PrepareWorker] | None:
        """The worker processes, when files are prepared there."""
        if self.config.prepare_workers == 0:
            return None
        tokenizer_json = getattr(self.embedder, "tokenizer_json", lambda: None)()
        if tokenizer_json is None:
            return None  # no Rust tokenizer to hand over: prepared in this thread
        with self._workers_lock:
            while len(self._workers) < self.config.prepare_workers:
                self._workers.append(PrepareWorker(tokenizer_json))
            return list(self._workers)

    def close(self) -> None:
        """End the worker processes, if any were started."""
        with self._workers_lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()

    def chunker(self, kb: KnowledgeBase) -> Chunker:
        return Chunker(ChunkingConfig(**kb.chunking), self.embedder.count_tokens,
                       getattr(self.embedder, "token_offsets", None))

    def ingest(
        self,
        kb: KnowledgeBase,
        indexes: Indexes,
        paths: Iterable[Path],
        on_file: Callable[[FileResult], None] | None = None,
        sources: dict[Path, str] | None = None,
        job_id: str | None = None,
        warm_keywords: bool = False,
    ) -> IngestReport:
        """Ingest files and folders; a bad file is reported and the others go on.

        Args:
            sources: optional stable source names per path (the API passes upload names);
                by default a file's source is its resolved absolute path.
            job_id: a job created beforehand (the API returns it before ingestion starts);
                by default a new one is recorded.
            warm_keywords: bring the keyword index's rows in memory up to date before the
                job is done, rather than at the next search (a server: after SciFact's 5,183
                passages, the first search took 224 ms instead of 0.3 ms).
        """
        check_embedder(kb, self.embedder)
        files = list(expand_paths(paths))
        if job_id is None:
            job = self.catalog.create_job("ingest", kb.id, len(files))
        else:
            job = self.catalog.start_job(job_id, len(files))
        report = IngestReport(job_id=job.id)
        chunker = self.chunker(kb)

        def emit(*results: FileResult) -> None:
            written = [r for r in results if r.status in (ADDED, REPLACED)]
            self.catalog.update_job(
                job.id,
                done=len(written),
                skipped=sum(r.status == UNCHANGED for r in results),
                failed=sum(r.status == FAILED for r in results),
                chunks=sum(r.chunks for r in written),
                errors=[(r.name, r.error or "") for r in results if r.status == FAILED],
            )
            for result in results:
                report.results.append(result)
                if on_file is not None:
                    on_file(result)

        # Embedding a group runs in a worker thread while this thread reads and chunks the
        # next files and writes the previous group: the model, the slow part, never waits.
        # Two workers: the next group is sorted and tokenized while the model still runs
        # the last batch of the one before (the model runs the older group's batches
        # first). The first groups are small, so the model starts within a few files
        # instead of waiting for a full group to be read and chunked; later ones grow to
        # _GROUP_CHUNKS, and the last ones shrink again. A third thread makes the group's
        # keyword tokens meanwhile, work this thread used to do after the model (on a GPU,
        # this thread's work sets the pace: cmrc2018-dev's tokens took 0.3 s of it on 2
        # cores). With worker processes (``IngestConfig.prepare_workers``), parsing, chunking
        # and keyword tokens happen there instead, batches of files in turn, two per worker
        # ahead, taken back in order.
        group: list[PreparedFile] = []
        group_limit = _FIRST_GROUP_CHUNKS
        pending: tuple[list[PreparedFile], Future[np.ndarray], Future[list[str]]] | None = None
        workers = self._prepare_workers()
        ahead = 2 * len(workers) if workers else 0  # batches the workers may have on hand
        in_flight: deque[tuple[list[_Read], Future[list[Prepared | Failure]]]] = deque()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rag-embed") as pool, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-keywords") as words:

            def submit(ready: list[PreparedFile]) -> None:
                nonlocal pending
                texts = [c.indexed_text for p in ready for c in p.chunks]
                embedding = pool.submit(self.embedder.embed_documents, texts)
                tokens: Future[list[str]]
                if all(p.tokens is not None for p in ready):
                    tokens = Future()
                    tokens.set_result([t for p in ready for t in p.tokens or ()])
                else:
                    tokens = words.submit(indexes.keywords.tokens_of, texts)
                if pending is not None:
                    emit(*self.writer.write(kb, indexes, *pending))
                pending = (ready, embedding, tokens)

            try:
                todo: dict[str, Path] = {}
                for path in files:  # the same file named twice is ingested once
                    todo.setdefault((sources or {}).get(path) or str(path.resolve()), path)
                known = self.catalog.find_documents(kb.id, list(todo))
                group_chunks = 0
                loaded: list[_Read] = []
                loaded_bytes, lookahead = 0, 4
                files_left, chunked_files, chunked = len(todo), 0, 0
                sent = 0  # batches sent to the worker processes

                def take(batch: list[_Read], outcomes: list[Prepared | Failure]) -> None:
                    """Group prepared files; full groups go to the model."""
                    nonlocal group, group_chunks, group_limit, files_left, chunked_files, chunked
                    for f, outcome in zip(batch, outcomes, strict=True):
                        files_left -= 1
                        if isinstance(outcome, Failure):
                            emit(self.writer.fail(kb, f.doc_id, f.path.name, f.source,
                                                  f.mime, f.size, outcome.error()))
                            continue
                        group.append(PreparedFile(
                            f.path, f.source, f.doc_id, f.data_sha, f.size, f.mime,
                            outcome.chunks, {"sha256": f.data_sha, **outcome.metadata},
                            f.existing, outcome.tokens))
                        group_chunks += len(outcome.chunks)
                        chunked_files += 1
                        chunked += len(outcome.chunks)
                        # Near the end, a group closes once it holds about as many chunks
                        # as are left: the last groups halve (to _LAST_GROUP_CHUNKS), so the
                        # one the model finishes last is small, and so is its write, which
                        # nothing overlaps. On a simulated fast GPU that write went from
                        # 0.46 s to 0.07 s of cmrc2018-dev's 2.5 s; on CPU, the smaller
                        # groups' batches hold 0.5% more padding.
                        left = files_left * chunked / chunked_files
                        if group_chunks >= group_limit or (
                                group_chunks >= _LAST_GROUP_CHUNKS and group_chunks >= left):
                            submit(group)
                            group, group_chunks = [], 0
                            group_limit = min(group_limit * 2, _GROUP_CHUNKS)

                def take_ready(wait: bool = False) -> None:
                    """Take the worker's finished batches, in order; with ``wait``, or while
                    too many are out, wait for the oldest."""
                    while in_flight and (wait or in_flight[0][1].done()
                                         or len(in_flight) > ahead):
                        batch, future = in_flight.popleft()
                        try:
                            outcomes = future.result()
                        except RagError as exc:
                            # The process died: these files fail; the next batch starts another.
                            outcomes = [Failure(exc.type, exc.message)] * len(batch)
                        take(batch, outcomes)

                def prepare_loaded() -> None:
                    """Parse and chunk the files read so far, here or in the worker."""
                    nonlocal loaded, loaded_bytes, lookahead, sent
                    batch, loaded, loaded_bytes = loaded, [], 0
                    lookahead = min(lookahead * 2, _LOOKAHEAD_FILES)
                    named = [(f.path.name, f.data) for f in batch]
                    if workers is None:
                        take(batch, self._prepare_here(chunker, named))
                        return
                    worker = workers[sent % len(workers)]  # in turn
                    sent += 1
                    in_flight.append((batch, worker.submit(kb.chunking, named)))
                    take_ready()

                for source, path in todo.items():
                    outcome = self._read(kb, path, source, known.get(source))
                    if isinstance(outcome, FileResult):
                        files_left -= 1
                        emit(outcome)
                        continue
                    loaded.append(outcome)
                    loaded_bytes += outcome.size
                    if len(loaded) >= lookahead or loaded_bytes >= _LOOKAHEAD_BYTES:
                        prepare_loaded()
                    take_ready()
                if loaded:
                    prepare_loaded()
                take_ready(wait=True)
                if group:
                    submit(group)
                if pending is not None:
                    emit(*self.writer.write(kb, indexes, *pending))
                    pending = None
            finally:
                if pending is not None:  # an unexpected error: let the embedding finish
                    pending[1].cancel()
                    pending[2].cancel()
        if warm_keywords and report.chunks_written:
            try:
                indexes.keywords.warm()
            except Exception as exc:  # the rows are written; the next search reads them
                log.warning("keyword index of %r not brought up to date: %s", kb.name, exc)
        self.catalog.update_job(job.id, status=JOB_DONE)
        return report

    def _read(
        self, kb: KnowledgeBase, path: Path, source: str, existing: Document | None,
    ) -> _Read | FileResult:
        """Read a file; an unchanged one is reported as such."""
        name = path.name
        doc_id = document_id(kb.id, source)
        try:
            mime = mime_type_for(name)
            size = path.stat().st_size
            if size > self.config.max_file_bytes:
                raise PayloadTooLarge(
                    f"{name}: {size} bytes is over the {self.config.max_file_bytes}-byte limit"
                )
            data = path.read_bytes()
        except OSError as exc:
            return self.writer.fail(
                kb, doc_id, name, source, "", 0,
                InvalidInput(f"{name}: cannot read the file ({exc.strerror})"))
        except RagError as exc:
            return self.writer.fail(kb, doc_id, name, source, "", 0, exc)
        sha = hashlib.sha256(data).hexdigest()
        if existing is not None and existing.status == DOC_INDEXED and existing.sha256 == sha:
            return FileResult(name, source, UNCHANGED, existing.chunk_count, doc_id)
        return _Read(path, source, doc_id, sha, len(data), mime, data, existing)

    def _prepare_here(self, chunker: Chunker,
                      files: list[tuple[str, bytes]]) -> list[Prepared | Failure]:
        """Parse and chunk files in this thread."""
        return prepare_files(chunker, files, self._token_offsets)

    def _token_offsets(self, texts: list[str]) -> list[list[tuple[int, int]] | None]:
        """The texts' token spans for the chunker, from one tokenizer call when the embedder
        can (its Rust tokenizer spreads the texts over the cores: cmrc2018-dev's 848
        passages took 0.53 s one by one and 0.31 s together on 2 cores); else None each, and
        the chunker asks for them itself."""
        batch = getattr(self.embedder, "token_offsets_batch", None)
        offsets = batch(texts) if batch is not None else None
        return offsets if offsets is not None else [None] * len(texts)

    def delete_document(self, kb: KnowledgeBase, indexes: Indexes, doc_id: str) -> Document:
        """Remove a document's vectors and keywords, then its catalog rows."""
        doc = self.catalog.get_document(kb.id, doc_id)
        indexes.vectors.delete(filter=Eq("document_id", doc_id))
        indexes.keywords.delete_document(doc_id)
        self.catalog.delete_document(doc_id)
        return doc

    def reconcile(self, kb: KnowledgeBase, indexes: Indexes) -> list[str]:
        """Repair documents a crash left half-written; returns the names repaired.

        A document still ``indexing`` may have vectors of a new version next to the chunks
        of its old one. Its vectors are removed and it is marked failed with a clear error,
        so the next ingest of the file writes it whole.
        """
        repaired = []
        for doc in self.catalog.documents_in_status(kb.id, [DOC_INDEXING]):
            indexes.vectors.delete(filter=Eq("document_id", doc.id))
            indexes.keywords.delete_document(doc.id)
            self.catalog.discard_chunks(doc.id)
            self.catalog.fail_document(doc.id, kb.id, doc.name, doc.source, doc.mime_type,
                                       doc.size, "indexing was interrupted; ingest it again")
            repaired.append(doc.name)
        return repaired
