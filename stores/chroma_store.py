"""Chroma backend: ``chroma:///dir`` (embedded, persistent) or ``chroma+http://host:8000``.

We always pass our own embeddings: collections are created with ``embedding_function=None``
and queried with ``query_embeddings``, so Chroma's default embedding model is never loaded
(it would try to download one). Collections use ``hnsw`` with ``space=cosine``; a hit's
score is ``1 - distance``, the cosine similarity.

URL parameters: ``collection`` (default ``rag``), ``timeout`` (seconds per request to a
server, default 10). A server's token is read from ``CHROMA_TOKEN``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from stores.base import (
    And,
    Eq,
    Filter,
    Hit,
    In,
    Ne,
    Or,
    Range,
    Record,
    check_dimension,
    prepare_upsert,
    query_vector,
)
from stores.errors import InvalidInput, MissingDependency, StoreUnavailable, sdk_errors
from stores.urls import StoreURL

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")


def open_url(url: str) -> ChromaStore:
    u = StoreURL(url)
    collection = collection_name(u.str_param("collection", "rag"))
    timeout = u.float_param("timeout", 10.0)
    u.finish()
    if u.scheme == "chroma":
        path = u.file_path()
        if not str(path) or str(path) == ".":
            raise InvalidInput(f"chroma URL needs a directory: {url!r}")
        return ChromaStore(collection, path=str(path), timeout=timeout)
    if not u.host:
        raise InvalidInput(f"chroma server URL needs a host: {url!r}")
    ssl = u.scheme == "chroma+https"
    return ChromaStore(collection, host=u.host, port=u.port or (443 if ssl else 8000),
                       ssl=ssl, timeout=timeout)


def collection_name(raw: str) -> str:
    """A valid Chroma collection name (3-512 of ``[A-Za-z0-9._-]``, alphanumeric ends)."""
    if _NAME_OK.match(raw):
        return raw
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", raw).strip("._-")
    return f"rag-{clean}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def _chromadb() -> Any:
    try:
        import chromadb
        from chromadb.config import Settings
    except ImportError as exc:
        raise MissingDependency("The Chroma store", "chroma") from exc
    return chromadb, Settings


class ChromaStore:
    """A Chroma collection behind the ``VectorStore`` protocol."""

    def __init__(self, collection: str, *, path: str | None = None, host: str = "",
                 port: int = 8000, ssl: bool = False, timeout: float = 10.0) -> None:
        chromadb, settings_cls = _chromadb()
        settings = settings_cls(anonymized_telemetry=False, allow_reset=False)
        self.collection_name = collection
        self._where = f"Chroma collection {collection!r} at {path or f'{host}:{port}'}"
        with self._calls("connect to"):
            if path is not None:
                os.makedirs(path, exist_ok=True)
                self._client = chromadb.PersistentClient(path=path, settings=settings)
            else:
                self._probe(host, port, ssl, timeout)
                headers = {}
                if os.environ.get("CHROMA_TOKEN"):
                    headers["Authorization"] = f"Bearer {os.environ['CHROMA_TOKEN']}"
                self._client = chromadb.HttpClient(host=host, port=port, ssl=ssl,
                                                   headers=headers, settings=settings)
                _bound_timeout(self._client, timeout)
            self._col = self._open_collection()
        self._dim: int | None = self._stored_dim()
        self._max_batch = int(self._client.get_max_batch_size())

    # -- the VectorStore protocol ---------------------------------------------------------

    @property
    def dim(self) -> int | None:
        return self._dim

    def upsert(self, records: Sequence[Record]) -> None:
        if not records:
            return
        recs, vecs = prepare_upsert(records)
        check_dimension(self._dim, vecs.shape[1], self._where)
        with self._calls("write to"):
            for start in range(0, len(recs), self._max_batch):
                part = recs[start : start + self._max_batch]
                metas = [_metadata(r) for r in part]
                self._clear_stale_keys(part, metas)
                self._col.upsert(
                    ids=[r.id for r in part],
                    embeddings=vecs[start : start + len(part)],
                    documents=[r.text for r in part],
                    metadatas=[m or None for m in metas],
                )
        self._dim = vecs.shape[1]

    def query(self, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        q = query_vector(vector, k)
        if self._dim is None:
            return []
        check_dimension(self._dim, q.shape[0], self._where)
        with self._calls("search"):
            res = self._col.query(
                query_embeddings=q[None, :], n_results=k, where=to_where(filter),
                include=["documents", "metadatas", "distances"],
            )
        return [
            Hit(i, 1.0 - float(d), doc or "", dict(meta or {}))
            for i, d, doc, meta in zip(res["ids"][0], res["distances"][0],
                                       res["documents"][0], res["metadatas"][0], strict=True)
        ]

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int:
        if ids is None and filter is None:
            raise InvalidInput("delete needs ids or a filter")
        with self._calls("delete from"):
            doomed: set[str] = set()
            if ids:
                doomed.update(self._col.get(ids=list(dict.fromkeys(ids)), include=[])["ids"])
            if filter is not None:
                doomed.update(self._col.get(where=to_where(filter), include=[])["ids"])
            ordered = sorted(doomed)
            for start in range(0, len(ordered), self._max_batch):
                self._col.delete(ids=ordered[start : start + self._max_batch])
        return len(doomed)

    def get(self, ids: Sequence[str]) -> list[Record]:
        if not ids:
            return []
        with self._calls("read from"):
            res = self._col.get(ids=list(dict.fromkeys(ids)),
                                include=["embeddings", "documents", "metadatas"])
        found = {
            i: Record(i, np.asarray(e, dtype=np.float32), doc or "", dict(meta or {}))
            for i, e, doc, meta in zip(res["ids"], res["embeddings"], res["documents"],
                                       res["metadatas"], strict=True)
        }
        return [found[i] for i in ids if i in found]

    def count(self, filter: Filter | None = None) -> int:
        with self._calls("count in"):
            if filter is None:
                return int(self._col.count())
            return len(self._col.get(where=to_where(filter), include=[])["ids"])

    def drop(self) -> None:
        with self._calls("drop"):
            with contextlib.suppress(Exception):  # already gone
                self._client.delete_collection(self.collection_name)
            self._col = self._open_collection()
        self._dim = None

    def close(self) -> None:
        self._col = None

    # -- helpers --------------------------------------------------------------------------

    def _calls(self, what: str) -> contextlib.AbstractContextManager[None]:
        return sdk_errors(what, self._where)

    def _clear_stale_keys(self, part: list[Record], metas: list[dict[str, Any]]) -> None:
        """Chroma's upsert merges metadata; a replaced record must lose keys it no longer
        has, so those are sent as ``None`` (Chroma's way to remove a key) in the same call."""
        old = self._col.get(ids=[r.id for r in part], include=["metadatas"])
        previous = dict(zip(old["ids"], old["metadatas"], strict=True))
        for rec, meta in zip(part, metas, strict=True):
            for key in previous.get(rec.id) or {}:
                if key not in meta:
                    meta[key] = None

    def _open_collection(self) -> Any:
        col = self._client.get_or_create_collection(
            self.collection_name, embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
        )
        with warnings.catch_warnings():  # chroma warns about its own legacy config format
            warnings.simplefilter("ignore", DeprecationWarning)
            space = ((col.configuration or {}).get("hnsw") or {}).get("space")
        if space not in (None, "cosine"):
            raise InvalidInput(
                f"{self._where} exists with hnsw space {space!r}, not cosine: "
                "pick another collection name (?collection=)"
            )
        return col

    def _stored_dim(self) -> int | None:
        with self._calls("read from"):
            res = self._col.get(limit=1, include=["embeddings"])
        embeddings = res.get("embeddings")
        if embeddings is None or len(embeddings) == 0:
            return None
        return len(embeddings[0])

    @staticmethod
    def _probe(host: str, port: int, ssl: bool, timeout: float) -> None:
        """Fail fast (and bounded) when the server is down or hangs; the client would not."""
        import httpx

        url = f"{'https' if ssl else 'http'}://{host}:{port}/api/v2/heartbeat"
        try:
            httpx.get(url, timeout=timeout).raise_for_status()
        except httpx.HTTPError as exc:
            raise StoreUnavailable(
                f"Chroma server at {host}:{port} is not reachable: {exc}"
            ) from exc


def _bound_timeout(client: Any, timeout: float) -> None:
    """Chroma's HTTP client is built with ``timeout=None``: a stuck server would hang every
    call. Give its httpx session a bounded timeout (reached through the client's server API
    object, the only handle it offers)."""
    session = getattr(getattr(client, "_server", None), "_session", None)
    if session is not None:
        import httpx

        session.timeout = httpx.Timeout(timeout)


def _metadata(rec: Record) -> dict[str, Any]:
    meta = {}
    for key, value in rec.metadata.items():
        if value is None:
            continue
        if not isinstance(value, str | int | float | bool):
            raise InvalidInput(
                f"record {rec.id}: Chroma metadata values are str, int, float or bool; "
                f"{key!r} is {type(value).__name__}"
            )
        meta[key] = value
    return meta


def to_where(flt: Filter | None) -> dict[str, Any] | None:
    """Translate a filter to a Chroma ``where`` document (``$ne`` matches a missing key in
    Chroma too, as in the reference semantics)."""
    if flt is None:
        return None
    if isinstance(flt, Eq):
        return {flt.field: {"$eq": flt.value}}
    if isinstance(flt, Ne):
        return {flt.field: {"$ne": flt.value}}
    if isinstance(flt, In):
        return {flt.field: {"$in": list(flt.values)}}
    if isinstance(flt, Range):
        ops = [(f"${name}", getattr(flt, name)) for name in ("gt", "gte", "lt", "lte")]
        parts = [{flt.field: {op: v}} for op, v in ops if v is not None]
        if len(parts) == 1:
            return parts[0]
        return {"$and": parts}
    if isinstance(flt, And | Or):
        key = "$and" if isinstance(flt, And) else "$or"
        parts = [w for w in (to_where(c) for c in flt.clauses) if w is not None]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            raise InvalidInput(f"an empty {key} filter cannot be sent to Chroma")
        return {key: parts}
    raise InvalidInput(f"unknown filter clause {flt!r}")
