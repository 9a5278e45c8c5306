"""Pinecone backend: ``pinecone://index-name?namespace=kb`` (key from ``PINECONE_API_KEY``).

``?host=`` names the index's data-plane host directly (a private endpoint, Pinecone Local, or
an emulator); without it the host is looked up from the index name through the control plane.
The index itself (dimension, ``cosine`` or ``dotproduct`` metric) is created by its owner in
Pinecone; each knowledge base lives in its own namespace.

Pinecone limits we respect: at most 1,000 vectors and 2 MB per upsert request, 40 KB of
metadata per vector (the chunk text is stored in metadata, cut to fit when a chunk is huge,
and flagged ``_text_truncated``; the catalog keeps the full text), 1,000 ids per fetch or
delete, no null metadata values. Counting and deleting by filter walk
``/vectors/fetch_by_metadata`` pages, so the count returned is exact.

URL parameters: ``namespace`` (default ``__default__``), ``host``, ``timeout`` (seconds per
request, default 10).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
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
from stores.errors import InvalidInput, MissingDependency, sdk_errors
from stores.urls import StoreURL

MAX_BATCH_VECTORS = 1000
MAX_REQUEST_BYTES = 2 * 1024 * 1024
MAX_METADATA_BYTES = 40 * 1024
MAX_IDS_PER_CALL = 1000
MAX_TOP_K_WITH_METADATA = 1000
_TEXT = "_text"
_TRUNCATED = "_text_truncated"
_RESERVED = (_TEXT, _TRUNCATED)


def open_url(url: str) -> PineconeStore:
    u = StoreURL(url)
    namespace = u.str_param("namespace", "__default__")
    host = u.str_param("host", "")
    timeout = u.float_param("timeout", 10.0)
    u.finish()
    if not u.host:
        raise InvalidInput(f"pinecone URL needs an index name: {url!r}")
    api_key = os.environ.get("PINECONE_API_KEY", "")
    if not api_key:
        raise InvalidInput("the pinecone store needs an API key: set PINECONE_API_KEY")
    return PineconeStore(u.host, namespace, api_key=api_key, host=host, timeout=timeout)


def _pinecone() -> Any:
    try:
        import pinecone
    except ImportError as exc:
        raise MissingDependency("The Pinecone store", "pinecone") from exc
    return pinecone


class PineconeStore:
    """One namespace of a Pinecone index behind the ``VectorStore`` protocol."""

    def __init__(self, index_name: str, namespace: str, *, api_key: str, host: str = "",
                 timeout: float = 10.0) -> None:
        pc_mod = _pinecone()
        self.index_name, self.namespace, self.timeout = index_name, namespace, timeout
        self._where = f"Pinecone index {index_name!r} namespace {namespace!r}"
        retry = pc_mod.RetryConfig(max_retries=2, backoff_factor=0.2, max_wait=2.0)
        with self._calls("connect to"):
            pc = pc_mod.Pinecone(api_key=api_key, timeout=timeout, retry_config=retry)
            if not host:
                host = pc.describe_index(index_name).host
            self.host = host
            self._index = pc.Index(host=host)
            stats = self._index.describe_index_stats()
        self._dim: int | None = int(stats.dimension) if stats.dimension else None

    # -- the VectorStore protocol ---------------------------------------------------------

    @property
    def dim(self) -> int | None:
        return self._dim

    def upsert(self, records: Sequence[Record]) -> None:
        if not records:
            return
        recs, vecs = prepare_upsert(records)
        check_dimension(self._dim, vecs.shape[1], self._where)
        items = [
            {"id": r.id, "values": v.tolist(), "metadata": _metadata(r)}
            for r, v in zip(recs, vecs, strict=True)
        ]
        with self._calls("write to"):
            for batch in _upsert_batches(items):
                self._index.upsert(vectors=batch, namespace=self.namespace,
                                   show_progress=False)

    def query(self, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        q = query_vector(vector, k)
        check_dimension(self._dim, q.shape[0], self._where)
        with self._calls("search"):
            res = self._index.query(
                vector=q.tolist(), top_k=min(k, MAX_TOP_K_WITH_METADATA),
                namespace=self.namespace, filter=to_pinecone_filter(filter),
                include_metadata=True,
            )
        hits = []
        for m in res.matches:
            meta = dict(m.metadata or {})
            text = str(meta.pop(_TEXT, ""))
            meta.pop(_TRUNCATED, None)
            hits.append(Hit(m.id, float(m.score), text, meta))
        return hits

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int:
        if ids is None and filter is None:
            raise InvalidInput("delete needs ids or a filter")
        doomed: set[str] = set()
        with self._calls("delete from"):
            if ids:
                doomed.update(r.id for r in self.get(list(ids)))
            if filter is not None:
                doomed.update(self._matching_ids(filter))
            ordered = sorted(doomed)
            for start in range(0, len(ordered), MAX_IDS_PER_CALL):
                self._index.delete(ids=ordered[start : start + MAX_IDS_PER_CALL],
                                   namespace=self.namespace)
        return len(doomed)

    def get(self, ids: Sequence[str]) -> list[Record]:
        found: dict[str, Record] = {}
        unique = list(dict.fromkeys(ids))
        with self._calls("read from"):
            for start in range(0, len(unique), 100):  # ids travel in the query string
                res = self._index.fetch(ids=unique[start : start + 100], namespace=self.namespace)
                for vid, vec in res.vectors.items():
                    found[vid] = _record(vid, vec.values, vec.metadata)
        return [found[i] for i in ids if i in found]

    def count(self, filter: Filter | None = None) -> int:
        with self._calls("count in"):
            if filter is not None:
                return len(self._matching_ids(filter))
            stats = self._index.describe_index_stats()
        summary = stats.namespaces.get(self.namespace)
        return int(summary.vector_count) if summary is not None else 0

    def drop(self) -> None:
        with self._calls("drop"):
            if self.count() > 0:
                self._index.delete(delete_all=True, namespace=self.namespace)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._index.close()

    # -- helpers --------------------------------------------------------------------------

    def _calls(self, what: str) -> contextlib.AbstractContextManager[None]:
        return sdk_errors(what, self._where)

    def _matching_ids(self, flt: Filter) -> list[str]:
        ids: list[str] = []
        token: str | None = None
        while True:
            page = self._index.fetch_by_metadata(
                filter=to_pinecone_filter(flt), namespace=self.namespace, limit=10_000,
                pagination_token=token,
            )
            ids.extend(page.vectors)
            token = page.pagination.next if page.pagination else None
            if not token:
                return ids


def _record(vid: str, values: Sequence[float], metadata: dict[str, Any] | None) -> Record:
    meta = dict(metadata or {})
    text = str(meta.pop(_TEXT, ""))
    meta.pop(_TRUNCATED, None)
    return Record(vid, np.asarray(values, dtype=np.float32), text, meta)


def _metadata(rec: Record) -> dict[str, Any]:
    """Pinecone metadata for a record: ours plus the text, within the 40 KB limit."""
    meta: dict[str, Any] = {}
    for key, value in rec.metadata.items():
        if key in _RESERVED:
            raise InvalidInput(f"record {rec.id}: metadata key {key!r} is reserved")
        if value is None:
            continue  # Pinecone takes no nulls; a missing key reads the same to our filters
        ok = isinstance(value, str | int | float | bool) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            raise InvalidInput(
                f"record {rec.id}: Pinecone metadata values are strings, numbers, booleans "
                f"or lists of strings; {key!r} is {type(value).__name__}"
            )
        meta[key] = value
    budget = MAX_METADATA_BYTES - _json_size(meta) - 64
    if budget < 0:
        raise InvalidInput(f"record {rec.id}: metadata exceeds Pinecone's 40 KB limit")
    text = rec.text
    if _json_size(text) > budget:
        raw = text.encode("utf-8")
        while _json_size(text) > budget:  # shrink until its JSON form (with escapes) fits
            raw = raw[: max(0, int(len(raw) * 0.9) - 1)]
            text = raw.decode("utf-8", errors="ignore")
        meta[_TRUNCATED] = True
    meta[_TEXT] = text
    return meta


def _json_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _upsert_batches(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Requests of at most 1,000 vectors and 2 MB of JSON."""
    batch: list[dict[str, Any]] = []
    size = 64
    for item in items:
        item_size = len(json.dumps(item).encode("utf-8")) + 1
        if batch and (len(batch) >= MAX_BATCH_VECTORS or size + item_size > MAX_REQUEST_BYTES):
            yield batch
            batch, size = [], 64
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def to_pinecone_filter(flt: Filter | None) -> dict[str, Any] | None:
    """Translate a filter to Pinecone's metadata filter language.

    ``Ne`` is spelled ``$exists: false`` or ``$ne`` so that a record without the key matches,
    as in the reference semantics, whichever way the service treats a missing key.
    """
    if flt is None:
        return None
    if isinstance(flt, Eq):
        return {flt.field: {"$eq": flt.value}}
    if isinstance(flt, Ne):
        return {"$or": [{flt.field: {"$exists": False}}, {flt.field: {"$ne": flt.value}}]}
    if isinstance(flt, In):
        return {flt.field: {"$in": list(flt.values)}}
    if isinstance(flt, Range):
        ops = {f"${n}": getattr(flt, n) for n in ("gt", "gte", "lt", "lte")
               if getattr(flt, n) is not None}
        return {flt.field: ops or {"$exists": True}}
    if isinstance(flt, And | Or):
        key = "$and" if isinstance(flt, And) else "$or"
        parts = [p for p in (to_pinecone_filter(c) for c in flt.clauses) if p is not None]
        if not parts:
            raise InvalidInput(f"an empty {key} filter cannot be sent to Pinecone")
        return parts[0] if len(parts) == 1 else {key: parts}
    raise InvalidInput(f"unknown filter clause {flt!r}")
