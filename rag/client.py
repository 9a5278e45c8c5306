"""Python SDK for the HTTP service: ``rag.Client`` (sync) and ``rag.AsyncClient``.

>>> client = Client("http://127.0.0.1:8000", api_key="...")
>>> job = client.upload("handbook", ["docs/"], progress=print)
>>> client.wait(job.id)
>>> for piece in client.ask("handbook", "How do refunds work?", stream=True):
...     print(piece.text if isinstance(piece, AskDelta) else piece.citations)

Errors come back as the server's ``RagError`` types (``NotFound``, ``PayloadTooLarge``, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ingest.catalog import ChunkInfo, Document, Job, KnowledgeBase
from ingest.loaders import supported_extensions
from ingest.types import expand_paths
from rag.types import Answer, Citation, Passage, SearchResult, Timings, Usage
from stores import errors as _errors
from stores.errors import RagError

T = TypeVar("T")
_FINISHED = ("done", "failed")


@dataclass(frozen=True)
class AskDelta:
    """A piece of a streamed answer's text."""

    text: str


@dataclass(frozen=True)
class AskSources:
    """The numbered passages a streamed answer may cite (sent before its text)."""

    citations: list[Citation]


def _build(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            continue
        if key in ("created_at", "updated_at") and isinstance(value, str):
            value = datetime.fromisoformat(value)
        kwargs[key] = value
    return cls(**kwargs)


def _answer(d: dict[str, Any]) -> Answer:
    return Answer(
        question=d["question"], text=d["text"],
        citations=[_build(Citation, c) for c in d["citations"]],
        passages=[_build(Passage, p) for p in d["passages"]],
        timings=_build(Timings, d["timings"]), usage=_build(Usage, d["usage"]),
        abstained=d.get("abstained", False), model=d.get("model", ""),
        finish_reason=d.get("finish_reason", "stop"))


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        err = response.json()["error"]
        kind, message = str(err["type"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "RagError", response.text[:300] or response.reason_phrase
    cls = getattr(_errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, RagError)) or kind == "MissingDependency":
        cls = RagError
    exc = cls(message)
    exc.status_code = response.status_code
    raise exc


def _upload_files(paths: Iterable[str | Path]) -> list[Path]:
    """Named files as given (the server judges them); from folders, the supported types."""
    known = set(supported_extensions())
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [f for f in expand_paths([p]) if f.suffix.lower() in known]
        else:
            files.append(p)
    if not files:
        raise _errors.InvalidInput("no files to upload")
    return files


def _events(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event = "message"
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[5:].strip())
            event = "message"


def _ask_item(kind: str, data: dict[str, Any]) -> AskSources | AskDelta | Answer:
    """One event of a streamed answer as the SDK hands it out (errors raised)."""
    if kind == "citations":
        return AskSources([_build(Citation, c) for c in data["sources"]])
    if kind == "delta":
        return AskDelta(data["text"])
    if kind == "done":
        return _answer(data["answer"])
    err = data.get("error") or {"type": "RagError", "message": f"unexpected event {kind}"}
    cls = getattr(_errors, str(err["type"]), RagError)
    if not (isinstance(cls, type) and issubclass(cls, RagError)):
        cls = RagError
    raise cls(str(err["message"]))


class Client:
    """Synchronous client; every route of the service as a typed method."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=httpx.Timeout(timeout, connect=5.0))

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise _errors.StoreUnavailable(f"cannot reach the RAG service: {exc}") from exc
        _raise_for(r)
        return r.json() if r.content else None

    # knowledge bases
    def create_kb(self, name: str, description: str = "",
                  store_url: str | None = None) -> KnowledgeBase:
        body = {"name": name, "description": description, "store_url": store_url}
        return _build(KnowledgeBase, self._call("POST", "/v1/knowledge-bases", json=body))

    def list_kbs(self) -> list[KnowledgeBase]:
        return [_build(KnowledgeBase, d) for d in self._call("GET", "/v1/knowledge-bases")]

    def get_kb(self, name: str) -> KnowledgeBase:
        return _build(KnowledgeBase, self._call("GET", f"/v1/knowledge-bases/{name}"))

    def update_kb(self, name: str, description: str) -> KnowledgeBase:
        data = self._call("PATCH", f"/v1/knowledge-bases/{name}",
                          json={"description": description})
        return _build(KnowledgeBase, data)

    def delete_kb(self, name: str) -> None:
        self._call("DELETE", f"/v1/knowledge-bases/{name}")

    # documents and jobs
    def upload(self, kb: str, paths: Iterable[str | Path],
               progress: Callable[[Job], None] | None = None, batch: int = 20) -> list[Job]:
        """Upload files and folders (recursively), ``batch`` files per request; returns the
        jobs. ``progress`` is called with each job as it is created."""
        files = _upload_files(paths)
        jobs = []
        for start in range(0, len(files), batch):
            part = files[start : start + batch]
            handles = [p.open("rb") for p in part]
            try:
                data = self._call("POST", f"/v1/knowledge-bases/{kb}/documents",
                                  files=[("files", (p.name, h)) for p, h in
                                         zip(part, handles, strict=True)])
            finally:
                for h in handles:
                    h.close()
            job = _build(Job, data["job"])
            jobs.append(job)
            if progress is not None:
                progress(job)
        return jobs

    def get_job(self, job_id: str) -> Job:
        return _build(Job, self._call("GET", f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float = 600.0,
             progress: Callable[[Job], None] | None = None) -> Job:
        """Follow a job's events until it is done or failed."""
        deadline = time.monotonic() + timeout
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events",
                               timeout=httpx.Timeout(timeout, connect=5.0)) as r:
            if not r.is_success:
                r.read()
                _raise_for(r)
            for kind, data in _events(r.iter_lines()):
                job = _build(Job, data)
                if progress is not None:
                    progress(job)
                if kind in _FINISHED or time.monotonic() > deadline:
                    return job
        return self.get_job(job_id)

    def list_documents(self, kb: str, status: str | None = None, offset: int = 0,
                       limit: int = 100) -> list[Document]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        data = self._call("GET", f"/v1/knowledge-bases/{kb}/documents", params=params)
        return [_build(Document, d) for d in data["documents"]]

    def get_document(self, kb: str, doc_id: str) -> Document:
        return _build(Document, self._call("GET", f"/v1/knowledge-bases/{kb}/documents/{doc_id}"))

    def delete_document(self, kb: str, doc_id: str) -> Document:
        data = self._call("DELETE", f"/v1/knowledge-bases/{kb}/documents/{doc_id}")
        return _build(Document, data)

    def list_chunks(self, kb: str, doc_id: str, offset: int = 0,
                    limit: int = 100) -> list[ChunkInfo]:
        data = self._call("GET", f"/v1/knowledge-bases/{kb}/documents/{doc_id}/chunks",
                          params={"offset": offset, "limit": limit})
        return [_build(ChunkInfo, c) for c in data["chunks"]]

    # retrieval and answers
    def search(self, kb: str, query: str, top_k: int | None = None, mode: str | None = None,
               filter: dict[str, Any] | None = None) -> SearchResult:
        body = {"query": query, "top_k": top_k, "mode": mode, "filter": filter}
        d = self._call("POST", f"/v1/knowledge-bases/{kb}/search", json=body)
        return SearchResult(d["query"], [_build(Passage, p) for p in d["passages"]],
                            _build(Timings, d["timings"]))

    def ask(self, kb: str, question: str, stream: bool = False, **options: Any
            ) -> Any:
        """The cited ``Answer``; with ``stream=True`` an iterator of ``AskSources`` (first),
        ``AskDelta`` pieces, then the final ``Answer``."""
        body = {"query": question, "stream": stream, **options}
        if not stream:
            return _answer(self._call("POST", f"/v1/knowledge-bases/{kb}/ask", json=body)
                           ["answer"])
        return self._ask_stream(kb, body)

    def _ask_stream(self, kb: str, body: dict[str, Any]) -> Iterator[Any]:
        with self._http.stream("POST", f"/v1/knowledge-bases/{kb}/ask", json=body) as r:
            if not r.is_success:
                r.read()
                _raise_for(r)
            for kind, data in _events(r.iter_lines()):
                yield _ask_item(kind, data)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous twin of the most used calls: search, ask (streaming), jobs."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                       timeout=httpx.Timeout(timeout, connect=5.0))

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            r = await self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise _errors.StoreUnavailable(f"cannot reach the RAG service: {exc}") from exc
        _raise_for(r)
        return r.json() if r.content else None

    async def list_kbs(self) -> list[KnowledgeBase]:
        return [_build(KnowledgeBase, d) for d in await self._call("GET", "/v1/knowledge-bases")]

    async def get_job(self, job_id: str) -> Job:
        return _build(Job, await self._call("GET", f"/v1/jobs/{job_id}"))

    async def search(self, kb: str, query: str, top_k: int | None = None) -> SearchResult:
        d = await self._call("POST", f"/v1/knowledge-bases/{kb}/search",
                             json={"query": query, "top_k": top_k})
        return SearchResult(d["query"], [_build(Passage, p) for p in d["passages"]],
                            _build(Timings, d["timings"]))

    async def ask(self, kb: str, question: str, **options: Any) -> Answer:
        d = await self._call("POST", f"/v1/knowledge-bases/{kb}/ask",
                             json={"query": question, **options})
        return _answer(d["answer"])

    async def ask_stream(self, kb: str, question: str, **options: Any) -> AsyncIterator[Any]:
        body = {"query": question, "stream": True, **options}
        async with self._http.stream("POST", f"/v1/knowledge-bases/{kb}/ask", json=body) as r:
            if not r.is_success:
                await r.aread()
                _raise_for(r)
            lines = [line async for line in r.aiter_lines()]
        for kind, data in _events(lines):
            yield _ask_item(kind, data)

    async def aclose(self) -> None:
        await self._http.aclose()
