"""The RAG facade: the public Python API over catalog, pipeline, retrieval and generation.

>>> rag = RAG.from_settings()
>>> rag.ingest(["docs/"], kb="handbook")
>>> answer = rag.ask("How do I reset my password?", kb="handbook")
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ingest.catalog import Catalog, Document, KnowledgeBase
from ingest.embedding import Embedder
from ingest.embedding_backends import make_embedder
from ingest.pipeline import IngestPipeline
from ingest.types import FileResult, Indexes, IngestReport
from rag import citations as cite
from rag.generation import make_generator
from rag.generation.base import Completion, GenerationParams, Generator, Message
from rag.prompts import build_messages, fit_passages, no_answer_text
from rag.retrieval import Mode, Retriever
from rag.settings import Settings
from rag.types import Answer, Passage, SearchResult, Timings, Usage
from stores import migrate, open_store, url_path
from stores.base import Filter, VectorStore
from stores.errors import Conflict, InvalidInput, NotFound
from stores.keyword import KeywordIndex


@dataclass(frozen=True)
class MigrationReport:
    kb: str
    from_url: str
    to_url: str
    copied: int
    source_dropped: bool
    seconds: float


@dataclass(frozen=True)
class AnswerDelta:
    """One streamed piece of an answer; the last one carries the finished ``answer``."""

    text: str
    answer: Answer | None = None
    passages: list[Passage] | None = None  # first, before any text: the numbered sources


class RAG:
    """Ingest documents into knowledge bases and answer questions from them with citations."""

    def __init__(
        self,
        settings: Settings,
        generator: Generator | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = settings.resolved_data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(settings.catalog_url)
        self._owns_embedder = embedder is None
        self.embedder: Embedder = embedder or make_embedder(settings.embedding,
                                                            self.data_dir / "models")
        self.pipeline = IngestPipeline(self.catalog, self.embedder, settings.ingest)
        self.retriever = Retriever(self.catalog, self.embedder, settings.retrieval)
        self._generator = generator
        self._owns_generator = generator is None  # made from settings on first use
        self._indexes: dict[str, Indexes] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RAG:
        """Build the engine from settings (the environment and ``.env`` when not given)."""
        return cls(settings or Settings())

    @property
    def generator(self) -> Generator:
        with self._lock:
            if self._generator is None:
                self._generator = make_generator(self.settings.generator,
                                                 self.data_dir / "models")
            return self._generator

    # -- knowledge bases ------------------------------------------------------------------------

    def create_kb(self, name: str, store_url: str | None = None,
                  description: str = "") -> KnowledgeBase:
        url = store_url or self.settings.store.url_for(str(self.data_dir), name)
        return self.catalog.create_kb(
            name, self.embedder.model_id, self.embedder.dim, url,
            self.settings.chunking.model_dump(), description,
        )

    def get_kb(self, name: str, counts: bool = True) -> KnowledgeBase:
        return self.catalog.get_kb(name, counts)

    def list_kbs(self) -> list[KnowledgeBase]:
        return self.catalog.list_kbs()

    def delete_kb(self, name: str) -> None:
        """Delete a knowledge base: its vectors, its keyword index, then its catalog rows."""
        kb = self.catalog.get_kb(name)
        indexes = self.indexes(kb)
        self._drop_vectors(kb.store_url, indexes.vectors)
        indexes.keywords.drop()
        with self._lock:
            self._indexes.pop(name, None)
        indexes.vectors.close()
        indexes.keywords.close()
        self._keyword_path(kb).unlink(missing_ok=True)
        self.catalog.delete_kb(name)

    def migrate_kb(self, name: str, to_url: str, drop_source: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> MigrationReport:
        """Copy a knowledge base's vectors to another store (no re-embedding), verify the
        copy, then switch the knowledge base to it.

        Nothing changes unless every step succeeds: on failure the half-written target is
        dropped and the knowledge base keeps its store. The old store is kept (and can be
        opened again by its URL) unless ``drop_source`` is set.
        """
        kb = self.catalog.get_kb(name)
        if to_url == kb.store_url:
            raise InvalidInput(f"knowledge base {name!r} already uses {to_url}")
        started = time.perf_counter()
        with self._lock:  # queries and ingestion in this process wait for the switch
            indexes = self.indexes(kb)
            source = indexes.vectors
            ids = self.catalog.kb_chunk_ids(kb.id)
            held = source.count()
            if held != len(ids):
                raise Conflict(
                    f"the store of {name!r} holds {held} vectors but the catalog records "
                    f"{len(ids)} chunks; let running ingestion finish, then retry"
                )
            target = open_store(to_url)
            try:
                migrate.check_target(target, kb.embedding_dim, to_url)
            except BaseException:
                target.close()
                raise
            try:
                copied = migrate.copy_records(source, target, ids, progress=progress)
                migrate.verify_copy(source, target, ids)
                if source.count() != held:
                    raise Conflict(f"{name!r} changed during the migration; retry it")
            except BaseException:
                with contextlib.suppress(Exception):
                    target.drop()
                target.close()
                raise
            self.catalog.update_kb(name, store_url=to_url)
            self._indexes[name] = Indexes(target, indexes.keywords)
            if drop_source:
                self._drop_vectors(kb.store_url, source)
            source.close()
        return MigrationReport(name, kb.store_url, to_url, copied, drop_source,
                               time.perf_counter() - started)

    @staticmethod
    def _drop_vectors(url: str, store: VectorStore) -> None:
        store.drop()
        if url.startswith("faiss:"):
            store.close()
            shutil.rmtree(url_path(url), ignore_errors=True)

    def _keyword_path(self, kb: KnowledgeBase) -> Path:
        return self.data_dir / "keyword" / f"{kb.name}.sqlite"

    def indexes(self, kb: KnowledgeBase) -> Indexes:
        """The knowledge base's opened stores (opened once per process, then reconciled)."""
        with self._lock:
            found = self._indexes.get(kb.name)
            if found is None:
                found = Indexes(open_store(kb.store_url), KeywordIndex(self._keyword_path(kb)))
                self._indexes[kb.name] = found
                self.pipeline.reconcile(kb, found)
            return found

    def refresh_keywords(self) -> None:
        """Bring every opened keyword index's rows in memory up to date with its file: the
        writes of other processes (a batch ingestion, the CLI), which the next search would
        otherwise read. One query per index when nothing changed."""
        with self._lock:
            opened = [i.keywords for i in self._indexes.values()]
        for keywords in opened:
            keywords.refresh()

    # -- documents ------------------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[str | Path],
        kb: str | None = None,
        on_file: Callable[[FileResult], None] | None = None,
        sources: dict[Path, str] | None = None,
        job_id: str | None = None,
        warm_keywords: bool = False,
    ) -> IngestReport:
        """Ingest files and folders into a knowledge base, creating it when it does not exist.

        ``sources`` names files by a stable source (the API's upload names); ``job_id`` runs
        the ingestion under a job created beforehand; ``warm_keywords``, for a process that
        searches next, reads the new keyword rows into memory before the job is done."""
        name = kb or self.settings.default_kb
        try:
            base = self.catalog.get_kb(name)
        except NotFound:
            base = self.create_kb(name)
        return self.pipeline.ingest(base, self.indexes(base), [Path(p) for p in paths], on_file,
                                    sources, job_id, warm_keywords)

    def list_documents(self, kb: str | None = None, status: str | None = None,
                       offset: int = 0, limit: int = 100) -> list[Document]:
        base = self.catalog.get_kb(kb or self.settings.default_kb)
        return self.catalog.list_documents(base.id, status, offset, limit)

    def delete_document(self, document: str, kb: str | None = None) -> Document:
        """Delete a document by id or by name; its vectors go first, then its catalog rows."""
        base = self.catalog.get_kb(kb or self.settings.default_kb)
        doc_id = self._find_document_id(base, document)
        return self.pipeline.delete_document(base, self.indexes(base), doc_id)

    def _find_document_id(self, kb: KnowledgeBase, document: str) -> str:
        docs = self.catalog.list_documents(kb.id, limit=1_000_000)
        by_id = [d for d in docs if d.id == document]
        if by_id:
            return by_id[0].id
        named = [d for d in docs if document in (d.name, d.source)]
        if len(named) == 1:
            return named[0].id
        if len(named) > 1:
            raise InvalidInput(f"several documents are named {document!r}; use the document id")
        raise NotFound(f"no document {document!r} in knowledge base {kb.name!r}")

    # -- questions ------------------------------------------------------------------------------

    def search(self, query: str, kb: str | None = None, top_k: int | None = None,
               mode: Mode | None = None, min_score: float | None = None,
               filter: Filter | None = None, *, rerank: bool | None = None) -> SearchResult:
        base = self.catalog.get_kb(kb or self.settings.default_kb, counts=False)
        start = time.perf_counter()
        passages = self.retriever.search(base, self.indexes(base), query, top_k, mode,
                                         min_score, filter, rerank)
        ms = (time.perf_counter() - start) * 1000
        return SearchResult(query, passages, Timings(retrieval_ms=ms))

    def ask(self, question: str, kb: str | None = None, top_k: int | None = None,
            mode: Mode | None = None, min_score: float | None = None,
            filter: Filter | None = None, history: list[Message] | None = None,
            params: GenerationParams | None = None, *, rerank: bool | None = None) -> Answer:
        """Answer a question from the knowledge base, citing the passages used."""
        final: Answer | None = None
        for delta in self.ask_stream(question, kb, top_k, mode, min_score, filter, history,
                                     params, rerank=rerank):
            final = delta.answer or final
        assert final is not None
        return final

    def ask_stream(self, question: str, kb: str | None = None, top_k: int | None = None,
                   mode: Mode | None = None, min_score: float | None = None,
                   filter: Filter | None = None, history: list[Message] | None = None,
                   params: GenerationParams | None = None, *, rerank: bool | None = None
                   ) -> Iterator[AnswerDelta]:
        """Stream an answer: text deltas, then a last delta holding the cited ``Answer``."""
        found = self.search(question, kb, top_k, mode, min_score, filter, rerank=rerank)
        timings = found.timings
        if not found.passages:
            text = no_answer_text(question)
            yield AnswerDelta("", passages=[])
            yield AnswerDelta(text)
            yield AnswerDelta("", Answer(question, text, [], [], timings, abstained=True,
                                         model=self.generator.model_id))
            return
        gen = self.generator
        p = params or self.generation_params()
        budget = gen.context_window - p.max_tokens
        passages = fit_passages(question, found.passages, gen.count_tokens, budget, history)
        if not passages:
            raise InvalidInput("the question alone does not fit the model's context window")
        messages = build_messages(question, passages, history)
        yield AnswerDelta("", passages=passages)
        completion: Completion | None = None
        for delta in gen.stream(messages, p):
            if delta.text:
                yield AnswerDelta(delta.text)
            completion = delta.completion or completion
        assert completion is not None
        yield AnswerDelta("", self._finish(question, passages, completion, timings, gen.model_id))

    def generation_params(self, max_tokens: int | None = None, temperature: float | None = None,
                          top_p: float | None = None, stop: tuple[str, ...] = (),
                          seed: int | None = None) -> GenerationParams:
        """The generator settings (``RAG_GENERATOR__*``), with what a request gives instead."""
        g = self.settings.generator
        return GenerationParams(max_tokens=max_tokens or g.max_tokens,
                                temperature=g.temperature if temperature is None else temperature,
                                top_p=g.top_p if top_p is None else top_p, stop=stop, seed=seed)

    @staticmethod
    def _finish(question: str, passages: list[Passage], completion: Completion,
                retrieval: Timings, model: str) -> Answer:
        text = cite.clean_markers(completion.text.strip(), len(passages))
        text = cite.attribute(text, passages)
        timings = Timings(
            retrieval_ms=retrieval.retrieval_ms,
            generation_ms=completion.total_time * 1000,
            time_to_first_token_ms=completion.time_to_first_token * 1000,
            tokens_per_second=completion.tokens_per_second,
        )
        usage = Usage(completion.prompt_tokens, completion.completion_tokens)
        return Answer(question, text, cite.resolve(text, passages), passages, timings, usage,
                      model=model, finish_reason=completion.finish_reason)

    def close(self) -> None:
        with self._lock:
            for indexes in self._indexes.values():
                indexes.vectors.close()
                indexes.keywords.close()
            self._indexes.clear()
        self.retriever.close()
        self.pipeline.close()
        self.catalog.close()
        close_embedder = getattr(self.embedder, "close", None)
        if self._owns_embedder and close_embedder is not None:
            close_embedder()  # its model thread; a given embedder is its owner's to close
        close_generator = getattr(self._generator, "close", None)
        if self._owns_generator and close_generator is not None:
            close_generator()  # the openai backend's connections (opened again if used)

    def __enter__(self) -> RAG:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
