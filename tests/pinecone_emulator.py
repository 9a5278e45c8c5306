"""A local emulator of Pinecone's REST data plane, for tests (Pinecone's cloud is out of reach).

It serves one dense index, in memory, on 127.0.0.1, and follows the documented request and
response shapes (API version 2025-04 and later): ``POST /vectors/upsert``, ``POST /query``,
``GET /vectors/fetch``, ``POST /vectors/fetch_by_metadata``, ``POST /vectors/delete``,
``POST /describe_index_stats``, ``GET /vectors/list``. Errors use the service's gRPC-gateway
body ``{"code": <grpc code>, "message": ..., "details": []}`` with its HTTP status, and the
service's documented limits are enforced: the ``Api-Key`` header, 1,000 vectors and 2 MB per
upsert, 40 KB of metadata per vector, no null metadata values, the index dimension, top_k at
most 10,000 (1,000 with values or metadata), 1,000 ids per fetch or delete.

The metadata filter language is implemented as documented: ``$eq $ne $gt $gte $lt $lte $in
$nin $exists $and $or``; a list-of-strings value matches ``$eq``/``$in`` when any element does;
range operators take numbers only; ``$ne`` and ``$nin`` do not match a record without the key
(the conservative reading: clients that want missing keys must say ``$exists: false``).

Run: ``python -m tests.pinecone_emulator --port 5081 --dimension 384 --api-key KEY``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

MAX_UPSERT = 1000
MAX_REQUEST = 2 * 1024 * 1024
MAX_METADATA = 40960
MAX_TOP_K = 10000
MAX_TOP_K_WITH_DATA = 1000
MAX_IDS = 1000
INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED = 3, 5, 16
_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, UNAUTHENTICATED: 401}


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.status = status or _STATUS[code]


def _ns(name: str | None) -> str:
    return name or "__default__"


def _scalar_eq(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, list):
        return wanted in stored
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    return bool(stored == wanted)


def _number(value: Any, op: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(INVALID_ARGUMENT, f"operator {op} takes a number, got {value!r}")
    return float(value)


def matches(flt: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Evaluate a Pinecone metadata filter (raises ApiError for a malformed one)."""
    if not isinstance(flt, dict):
        raise ApiError(INVALID_ARGUMENT, "filter must be an object")
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise ApiError(INVALID_ARGUMENT, f"{key} takes a non-empty array")
            results = [matches(c, meta) for c in cond]
            if not (all(results) if key == "$and" else any(results)):
                return False
            continue
        if key.startswith("$"):
            raise ApiError(INVALID_ARGUMENT, f"unknown top-level operator {key}")
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, arg in ops.items():
            if not _field_matches(meta, key, op, arg):
                return False
    return True


def _field_matches(meta: dict[str, Any], key: str, op: str, arg: Any) -> bool:
    present = key in meta
    value = meta.get(key)
    if op == "$exists":
        if not isinstance(arg, bool):
            raise ApiError(INVALID_ARGUMENT, "$exists takes true or false")
        return present == arg
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not arg:
            raise ApiError(INVALID_ARGUMENT, f"{op} takes a non-empty array")
        if not present:
            return False
        hit = any(_scalar_eq(value, a) for a in arg)
        return hit if op == "$in" else not hit
    if op in ("$eq", "$ne"):
        if isinstance(arg, dict | list) or arg is None:
            raise ApiError(INVALID_ARGUMENT, f"{op} takes a string, number or boolean")
        if not present:
            return False
        return _scalar_eq(value, arg) == (op == "$eq")
    if op in ("$gt", "$gte", "$lt", "$lte"):
        bound = _number(arg, op)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        v = float(value)
        return {"$gt": v > bound, "$gte": v >= bound, "$lt": v < bound, "$lte": v <= bound}[op]
    raise ApiError(INVALID_ARGUMENT, f"unknown filter operator {op}")


class Index:
    """One dense index: namespaces of ``id -> (values, metadata)``."""

    def __init__(self, dimension: int, metric: str) -> None:
        self.dimension, self.metric = dimension, metric
        self.namespaces: dict[str, dict[str, tuple[list[float], dict[str, Any]]]] = {}
        self.lsn = 0

    def check_vector(self, values: Any) -> list[float]:
        if not isinstance(values, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in values
        ):
            raise ApiError(INVALID_ARGUMENT, "values must be an array of numbers")
        if len(values) != self.dimension:
            raise ApiError(
                INVALID_ARGUMENT,
                f"Vector dimension {len(values)} does not match the dimension of the index "
                f"{self.dimension}",
            )
        return [float(x) for x in values]

    def score(self, a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        if self.metric == "dotproduct":
            return dot
        if self.metric == "euclidean":
            return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))
        na = math.sqrt(sum(x * x for x in a))
        nb = math.sqrt(sum(y * y for y in b))
        return dot / (na * nb) if na and nb else 0.0


def _check_metadata(vid: str, meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ApiError(INVALID_ARGUMENT, f"metadata of vector {vid} must be an object")
    size = len(json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA:
        raise ApiError(
            INVALID_ARGUMENT,
            f"Metadata size is {size} bytes, which exceeds the limit of {MAX_METADATA} bytes "
            f"per vector",
        )
    for key, value in meta.items():
        ok = isinstance(value, str | int | float | bool) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            raise ApiError(
                INVALID_ARGUMENT,
                f"Metadata value for field {key} must be a string, number, boolean or list "
                f"of strings, got {type(value).__name__ if value is not None else 'null'}",
            )
    return meta


def _check_ids(ids: Any, what: str) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 512
                                            for i in ids):
        raise ApiError(INVALID_ARGUMENT, f"{what}: ids must be strings of 1-512 characters")
    if len(ids) > MAX_IDS:
        raise ApiError(INVALID_ARGUMENT, f"{what}: at most {MAX_IDS} ids per request")
    return ids


def create_app(dimension: int, api_key: str, metric: str = "cosine") -> FastAPI:
    app = FastAPI(title="pinecone data-plane emulator")
    index = Index(dimension, metric)

    @app.middleware("http")
    async def auth_and_errors(request: Request, call_next: Any) -> Response:
        if request.headers.get("Api-Key") != api_key:
            return JSONResponse(
                {"code": UNAUTHENTICATED, "message": "Invalid API Key", "details": []}, 401)
        if int(request.headers.get("content-length") or 0) > MAX_REQUEST:
            return JSONResponse({"code": INVALID_ARGUMENT, "details": [], "message":
                                 f"Request size exceeds the maximum of {MAX_REQUEST} bytes"},
                                400)
        response: Response = await call_next(request)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": exc.message, "details": []},
                            exc.status)

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(INVALID_ARGUMENT, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(INVALID_ARGUMENT, "request body must be a JSON object")
        return data

    def written() -> dict[str, str]:
        index.lsn += 1
        return {"x-pinecone-request-lsn": str(index.lsn)}

    def read_headers() -> dict[str, str]:
        return {"x-pinecone-max-indexed-lsn": str(index.lsn)}

    @app.post("/vectors/upsert")
    async def upsert(request: Request) -> JSONResponse:
        data = await body(request)
        vectors = data.get("vectors")
        if not isinstance(vectors, list) or not vectors:
            raise ApiError(INVALID_ARGUMENT, "vectors must be a non-empty array")
        if len(vectors) > MAX_UPSERT:
            raise ApiError(INVALID_ARGUMENT,
                           f"Too many vectors in one upsert: {len(vectors)} > {MAX_UPSERT}")
        staged = []
        for v in vectors:
            if not isinstance(v, dict):
                raise ApiError(INVALID_ARGUMENT, "each vector must be an object")
            vid = _check_ids([v.get("id")], "upsert")[0]
            staged.append((vid, index.check_vector(v.get("values")),
                           _check_metadata(vid, v.get("metadata"))))
        ns = index.namespaces.setdefault(_ns(data.get("namespace")), {})
        for vid, values, meta in staged:  # all or nothing: validated before any write
            ns[vid] = (values, meta)
        return JSONResponse({"upsertedCount": len(staged)}, headers=written())

    @app.post("/query")
    async def query(request: Request) -> JSONResponse:
        data = await body(request)
        top_k = data.get("topK")
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ApiError(INVALID_ARGUMENT, f"topK must be between 1 and {MAX_TOP_K}")
        include_values = bool(data.get("includeValues"))
        include_meta = bool(data.get("includeMetadata"))
        if (include_values or include_meta) and top_k > MAX_TOP_K_WITH_DATA:
            raise ApiError(INVALID_ARGUMENT, f"topK must be at most {MAX_TOP_K_WITH_DATA} "
                           "when including values or metadata")
        name = _ns(data.get("namespace"))
        ns = index.namespaces.get(name, {})
        if "id" in data:
            if data["id"] not in ns:
                raise ApiError(INVALID_ARGUMENT, f"vector {data['id']} not found")
            qv = ns[data["id"]][0]
        else:
            qv = index.check_vector(data.get("vector"))
        flt = data.get("filter")
        scored = [
            (index.score(qv, values), vid, values, meta)
            for vid, (values, meta) in ns.items()
            if flt is None or matches(flt, meta)
        ]
        scored.sort(key=lambda t: t[0], reverse=index.metric != "euclidean")
        out = []
        for score, vid, values, meta in scored[:top_k]:
            m: dict[str, Any] = {"id": vid, "score": score, "values": []}
            if include_values:
                m["values"] = values
            if include_meta:
                m["metadata"] = meta
            out.append(m)
        return JSONResponse({"matches": out, "namespace": "" if name == "__default__" else name,
                             "usage": {"readUnits": max(1, len(ns) // 1000)}},
                            headers=read_headers())

    def vector_json(vid: str, values: list[float], meta: dict[str, Any]) -> dict[str, Any]:
        return {"id": vid, "values": values, "metadata": meta}

    @app.get("/vectors/fetch")
    async def fetch(request: Request) -> JSONResponse:
        ids = _check_ids(request.query_params.getlist("ids"), "fetch")
        if not ids:
            raise ApiError(INVALID_ARGUMENT, "fetch needs at least one id")
        name = _ns(request.query_params.get("namespace"))
        ns = index.namespaces.get(name, {})
        found = {i: vector_json(i, *ns[i]) for i in ids if i in ns}
        return JSONResponse({"vectors": found, "namespace": name,
                             "usage": {"readUnits": 1}}, headers=read_headers())

    def page(ns: dict[str, Any], keys: list[str], limit: int, token: str | None
             ) -> tuple[list[str], dict[str, str] | None]:
        start = int(base64.b64decode(token).decode()) if token else 0
        chunk = keys[start : start + limit]
        nxt = start + limit
        if nxt < len(keys):
            return chunk, {"next": base64.b64encode(str(nxt).encode()).decode()}
        return chunk, None

    @app.post("/vectors/fetch_by_metadata")
    async def fetch_by_metadata(request: Request) -> JSONResponse:
        data = await body(request)
        flt = data.get("filter")
        if not flt:
            raise ApiError(INVALID_ARGUMENT, "filter must not be empty")
        limit = data.get("limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise ApiError(INVALID_ARGUMENT, "limit must be between 1 and 10000")
        name = _ns(data.get("namespace"))
        ns = index.namespaces.get(name, {})
        keys = sorted(vid for vid, (_, meta) in ns.items() if matches(flt, meta))
        chunk, pagination = page(ns, keys, limit, data.get("paginationToken"))
        result: dict[str, Any] = {
            "vectors": {vid: vector_json(vid, *ns[vid]) for vid in chunk},
            "namespace": name, "usage": {"readUnits": 1},
        }
        if pagination:
            result["pagination"] = pagination
        return JSONResponse(result, headers=read_headers())

    @app.get("/vectors/list")
    async def list_ids(request: Request) -> JSONResponse:
        q = request.query_params
        name = _ns(q.get("namespace"))
        ns = index.namespaces.get(name, {})
        limit = int(q.get("limit") or 100)
        if not 1 <= limit <= 100:
            raise ApiError(INVALID_ARGUMENT, "limit must be between 1 and 100")
        keys = sorted(k for k in ns if k.startswith(q.get("prefix") or ""))
        chunk, pagination = page(ns, keys, limit, q.get("paginationToken"))
        result: dict[str, Any] = {"vectors": [{"id": k} for k in chunk], "namespace": name,
                                  "usage": {"readUnits": 1}}
        if pagination:
            result["pagination"] = pagination
        return JSONResponse(result)

    @app.post("/vectors/delete")
    async def delete(request: Request) -> JSONResponse:
        data = await body(request)
        name = _ns(data.get("namespace"))
        ids, delete_all, flt = data.get("ids"), data.get("deleteAll", False), data.get("filter")
        if sum(x is not None and x is not False for x in (ids, flt, delete_all or None)) != 1:
            raise ApiError(INVALID_ARGUMENT, "delete takes exactly one of ids, deleteAll, filter")
        ns = index.namespaces.get(name)
        if ns is None:
            if delete_all:
                raise ApiError(NOT_FOUND, f"Namespace not found: {name}")
            return JSONResponse({}, headers=written())
        if delete_all:
            del index.namespaces[name]
        elif ids is not None:
            for vid in _check_ids(ids, "delete"):
                ns.pop(vid, None)
        else:
            for vid in [v for v, (_, meta) in ns.items() if matches(flt, meta)]:
                del ns[vid]
        if not ns:
            index.namespaces.pop(name, None)
        return JSONResponse({}, headers=written())

    @app.post("/describe_index_stats")
    async def describe_index_stats(request: Request) -> JSONResponse:
        data = await body(request)
        if data.get("filter"):
            raise ApiError(INVALID_ARGUMENT, "Serverless and starter indexes do not support "
                           "describing index stats with metadata filtering")
        spaces = {n: {"vectorCount": len(v)} for n, v in index.namespaces.items() if v}
        return JSONResponse({
            "namespaces": spaces, "dimension": index.dimension, "indexFullness": 0.0,
            "totalVectorCount": sum(len(v) for v in index.namespaces.values()),
            "metric": index.metric, "vectorType": "dense",
        }, headers=read_headers())

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dimension", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--metric", default="cosine",
                        choices=["cosine", "dotproduct", "euclidean"])
    args = parser.parse_args()
    uvicorn.run(create_app(args.dimension, args.api_key, args.metric), host="127.0.0.1",
                port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
