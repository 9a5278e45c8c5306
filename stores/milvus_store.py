"""Milvus backend: ``milvus:///path/to/file.db`` (Milvus Lite) or ``milvus://host:19530``.

One collection per knowledge base with four fields: ``id`` (VARCHAR primary key), ``vector``
(FLOAT_VECTOR), ``text`` (VARCHAR) and ``metadata`` (JSON). Vectors are normalized and
indexed with the ``IP`` metric, so scores are cosine similarities. Reads see this store's
own writes (the pipeline relies on it): reads within ``fresh_s`` seconds of a write are
``Strong``, later ones ``Bounded`` (writes of other processes show within Milvus's staleness
bound, about 5 s).

URL parameters: ``collection`` (default ``rag``), ``index`` (IVF_FLAT, IVF_SQ8, HNSW, FLAT;
default IVF_FLAT), ``nlist``, ``nprobe`` (IVF), ``m``, ``ef_construction``, ``ef`` (HNSW),
``timeout`` (seconds per call, default 10), ``write_timeout`` (seconds per write, which
may wait for a segment to be sealed and indexed; default 300), ``consistency`` (auto,
strong, bounded, session, eventually; default auto, as above), ``fresh_s`` (default 10).
A server's token is read
from ``MILVUS_TOKEN``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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

_INDEXES = ("IVF_FLAT", "IVF_SQ8", "HNSW", "FLAT")
_FIELDS = ("id", "vector", "text", "metadata")
_CONSISTENCY = ("auto", "strong", "bounded", "session", "eventually")
_MAX_TEXT_BYTES = 65535
_MAX_ID = 512
_PAGE = 16384  # Milvus's largest query/search window
_BATCH_BYTES = 32 << 20  # stay well under the server's 64 MB gRPC message limit


@dataclass(frozen=True)
class MilvusParams:
    index: str = "IVF_FLAT"
    nlist: int = 128
    nprobe: int = 16
    m: int = 16
    ef_construction: int = 200
    ef: int = 64
    timeout: float = 10.0
    write_timeout: float = 300.0
    consistency: str = "auto"
    fresh_s: float = 10.0


def open_url(url: str) -> MilvusStore:
    u = StoreURL(url)
    params = MilvusParams(
        index=u.str_param("index", "IVF_FLAT").upper(),
        nlist=u.int_param("nlist", 128),
        nprobe=u.int_param("nprobe", 16),
        m=u.int_param("m", 16),
        ef_construction=u.int_param("ef_construction", 200),
        ef=u.int_param("ef", 64),
        timeout=u.float_param("timeout", 10.0),
        write_timeout=u.float_param("write_timeout", 300.0),
        consistency=u.str_param("consistency", "auto").lower(),
        fresh_s=u.float_param("fresh_s", 10.0),
    )
    collection = collection_name(u.str_param("collection", "rag"))
    u.finish()
    lite = u.scheme == "milvus" and (not u.netloc or u.path.endswith(".db"))
    if lite:
        path = u.file_path()
        if not path.name.endswith(".db"):
            raise InvalidInput(f"a Milvus Lite URL names a .db file: {url!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = str(path)
    else:
        tls = u.scheme == "milvus+https"
        uri = f"{'https' if tls else 'http'}://{u.host}:{u.port or 19530}"
    return MilvusStore(uri, collection, params, token=os.environ.get("MILVUS_TOKEN", ""))


def collection_name(raw: str) -> str:
    """A valid Milvus collection name (letters, digits, '_'; not starting with a digit).

    Names that need changing get a short hash of the original, so two knowledge bases whose
    names differ only in punctuation still get different collections.
    """
    clean = re.sub(r"[^A-Za-z0-9_]", "_", raw)
    if clean != raw or not clean or clean[0].isdigit():
        clean = f"c_{clean}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return clean[:255]


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise MissingDependency("The Milvus store", "milvus") from exc
    return pymilvus


class MilvusStore:
    """A Milvus collection behind the ``VectorStore`` protocol."""

    def __init__(self, uri: str, collection: str, params: MilvusParams, token: str = "") -> None:
        if params.index not in _INDEXES:
            raise InvalidInput(f"milvus index must be one of {', '.join(_INDEXES)}")
        if params.consistency not in _CONSISTENCY:
            raise InvalidInput(f"milvus consistency must be one of {', '.join(_CONSISTENCY)}")
        self._pm = _pymilvus()
        self.uri, self.collection, self.params = uri, collection, params
        self._where = f"Milvus collection {collection!r} at {uri}"
        self._dim: int | None = None
        self._last_write = time.monotonic()  # a new handle reads Strong for a while, too
        with self._calls("connect to"):
            self._client = self._pm.MilvusClient(uri=uri, token=token, timeout=params.timeout)
            if self._client.has_collection(collection, timeout=params.timeout):
                self._adopt()

    # -- the VectorStore protocol ---------------------------------------------------------

    @property
    def dim(self) -> int | None:
        return self._dim

    def upsert(self, records: Sequence[Record]) -> None:
        if not records:
            return
        recs, vecs = prepare_upsert(records)
        check_dimension(self._dim, vecs.shape[1], self._where)
        rows = [self._row(r, v) for r, v in zip(recs, vecs, strict=True)]
        with self._calls("write to"):
            if self._dim is None:
                self._create(vecs.shape[1])
            for batch in _batches(rows, vecs.shape[1]):
                self._client.upsert(self.collection, batch,
                                    timeout=self.params.write_timeout)
                self._last_write = time.monotonic()

    def query(self, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        q = query_vector(vector, k)
        if self._dim is None:
            return []
        check_dimension(self._dim, q.shape[0], self._where)
        p = self.params
        search_params = {"nprobe": p.nprobe} if p.index.startswith("IVF") else {}
        if p.index == "HNSW":
            search_params = {"ef": max(p.ef, k)}
        with self._calls("search"):
            result = self._read(
                "search", data=[q.tolist()], limit=min(k, _PAGE),
                filter=to_expr(filter), output_fields=["text", "metadata"],
                search_params={"metric_type": "IP", "params": search_params},
            )
        return [
            Hit(str(h["id"]), float(h["distance"]), h["entity"]["text"],
                dict(h["entity"]["metadata"] or {}))
            for h in result[0]
        ]

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int:
        if ids is None and filter is None:
            raise InvalidInput("delete needs ids or a filter")
        if self._dim is None:
            return 0
        doomed: set[str] = set()
        timeout = self.params.write_timeout
        with self._calls("delete from"):
            if ids:
                doomed.update(r.id for r in self.get(list(ids), with_vectors=False))
                ordered = sorted(doomed)
                for start in range(0, len(ordered), _PAGE):
                    part = ordered[start : start + _PAGE]
                    self._client.delete(self.collection, ids=part, timeout=timeout)
                    self._last_write = time.monotonic()
            if filter is not None:
                expr = to_expr(filter)
                while True:  # one window of matching ids at a time (offset is capped too)
                    rows = self._read("query", filter=expr, output_fields=["id"], limit=_PAGE)
                    part = [str(r["id"]) for r in rows]
                    if part:
                        self._client.delete(self.collection, ids=part, timeout=timeout)
                        self._last_write = time.monotonic()
                    doomed.update(part)
                    if len(part) < _PAGE:
                        break
        return len(doomed)

    def get(self, ids: Sequence[str], with_vectors: bool = True) -> list[Record]:
        if not ids or self._dim is None:
            return []
        fields = ["text", "metadata", *(["vector"] if with_vectors else [])]
        found: dict[str, Record] = {}
        with self._calls("read from"):
            unique = list(dict.fromkeys(ids))
            for start in range(0, len(unique), _PAGE):
                rows = self._read("get", ids=unique[start : start + _PAGE],
                                  output_fields=fields)
                for row in rows:
                    vec = np.asarray(row.get("vector", []), dtype=np.float32)
                    found[row["id"]] = Record(row["id"], vec, row["text"],
                                              dict(row["metadata"] or {}))
        return [found[i] for i in ids if i in found]

    def count(self, filter: Filter | None = None) -> int:
        if self._dim is None:
            return 0
        with self._calls("count in"):
            rows = self._read("query", filter=to_expr(filter), output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def drop(self) -> None:
        with self._calls("drop"):
            if self._client.has_collection(self.collection, timeout=self.params.timeout):
                self._client.drop_collection(self.collection, timeout=self.params.timeout)
        self._dim = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def wait_indexed(self, timeout: float = 600.0) -> None:
        """Seal what was written and wait until the index covers every row (after a bulk
        load: until then Milvus answers from unindexed segments by brute force)."""
        if self._dim is None:
            return
        deadline = time.monotonic() + timeout
        with self._calls("index"):
            self._client.flush(self.collection, timeout=self.params.write_timeout)
            while True:
                info = self._client.describe_index(self.collection, "vector",
                                                   timeout=self.params.timeout)
                if int(info.get("pending_index_rows", 0)) == 0 and (
                        int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0))):
                    return
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"{self._where}: index not built after {timeout}s")
                time.sleep(0.5)

    # -- helpers --------------------------------------------------------------------------

    def _calls(self, what: str) -> contextlib.AbstractContextManager[None]:
        return sdk_errors(what, self._where)

    def _read(self, method: str, **kwargs: Any) -> Any:
        """A read at the consistency it needs. A ``Bounded`` read runs at a timestamp a few
        seconds old, so it misses rows written in those seconds; reads within
        ``fresh_s`` of this handle's last write (or of its opening) are ``Strong`` instead,
        and later ones ``Bounded``, which do not wait for the next time tick (a Strong
        search costs about 300 ms on a Milvus 2.3 server)."""
        level = self.params.consistency
        if level == "auto":
            recent = time.monotonic() - self._last_write < self.params.fresh_s
            level = "strong" if recent else "bounded"
        return getattr(self._client, method)(
            self.collection, consistency_level=level.capitalize(),
            timeout=self.params.timeout, **kwargs)

    def _adopt(self) -> None:
        """Take an existing collection: check it has our schema and load it for search."""
        desc = self._client.describe_collection(self.collection, timeout=self.params.timeout)
        fields = {f["name"]: f for f in desc["fields"]}
        if not set(_FIELDS) <= set(fields):
            raise InvalidInput(
                f"{self._where} exists with fields {sorted(fields)}, not {list(_FIELDS)}: "
                "pick another collection name (?collection=)"
            )
        self._dim = int(fields["vector"]["params"]["dim"])
        self._client.load_collection(self.collection, timeout=self.params.timeout)

    def _create(self, dim: int) -> None:
        dt = self._pm.DataType
        schema = self._pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", dt.VARCHAR, is_primary=True, max_length=_MAX_ID)
        schema.add_field("vector", dt.FLOAT_VECTOR, dim=dim)
        schema.add_field("text", dt.VARCHAR, max_length=_MAX_TEXT_BYTES)
        schema.add_field("metadata", dt.JSON)
        p = self.params
        index_params = self._client.prepare_index_params()
        build: dict[str, int] = {}
        if p.index.startswith("IVF"):
            build = {"nlist": p.nlist}
        elif p.index == "HNSW":
            build = {"M": p.m, "efConstruction": p.ef_construction}
        index_params.add_index(field_name="vector", index_type=p.index, metric_type="IP",
                               params=build)
        self._client.create_collection(
            self.collection, schema=schema, index_params=index_params,
            consistency_level="Strong", timeout=p.timeout,
        )
        self._dim = dim

    def _row(self, rec: Record, vec: np.ndarray) -> dict[str, Any]:
        if len(rec.id) > _MAX_ID:
            raise InvalidInput(f"record id longer than {_MAX_ID} characters: {rec.id[:40]}...")
        if len(rec.text.encode("utf-8")) > _MAX_TEXT_BYTES:
            raise InvalidInput(
                f"record {rec.id}: text over {_MAX_TEXT_BYTES} bytes does not fit a Milvus "
                "VARCHAR field; use smaller chunks"
            )
        return {"id": rec.id, "vector": vec.tolist(), "text": rec.text,
                "metadata": dict(rec.metadata)}


def _batches(rows: list[dict[str, Any]], dim: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_size = dim * 4 + len(row["text"].encode()) + len(json.dumps(row["metadata"])) + 64
        if batch and size + row_size > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _field(name: str) -> str:
    return f"metadata[{json.dumps(name, ensure_ascii=False)}]"


def to_expr(flt: Filter | None) -> str:
    """Translate a filter to a Milvus boolean expression over the JSON ``metadata`` field.

    ``Ne`` is spelled with ``not exists`` because Milvus Lite and the server disagree on
    what ``!=`` means for a missing key; ``In`` is a disjunction because Milvus Lite does not
    take ``in`` on a JSON path.
    """
    if flt is None:
        return ""
    if isinstance(flt, Eq):
        return f"{_field(flt.field)} == {_literal(flt.value)}"
    if isinstance(flt, Ne):
        f = _field(flt.field)
        return f"((not (exists {f})) or ({f} != {_literal(flt.value)}))"
    if isinstance(flt, In):
        return "(" + " or ".join(to_expr(Eq(flt.field, v)) for v in flt.values) + ")"
    if isinstance(flt, Range):
        f = _field(flt.field)
        ops = (("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<="))
        parts = [f"{f} {sym} {_literal(getattr(flt, attr))}" for attr, sym in ops
                 if getattr(flt, attr) is not None]
        return "(" + " and ".join(parts) + ")" if parts else f"exists {f}"
    if isinstance(flt, And | Or) and not flt.clauses:
        return 'id != ""' if isinstance(flt, And) else 'id == ""'
    if isinstance(flt, And | Or):
        joiner = " and " if isinstance(flt, And) else " or "
        return "(" + joiner.join(to_expr(c) for c in flt.clauses) + ")"
    raise InvalidInput(f"unknown filter clause {flt!r}")
