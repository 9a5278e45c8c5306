"""The vector store seam: the ``VectorStore`` protocol, its values and the filter grammar.

Filter grammar (one definition, translated by each backend)::

    Eq(field, value)          field == value
    Ne(field, value)          field != value (true when the field is missing)
    In(field, values)         field is one of values
    Range(field, gt=, gte=, lt=, lte=)
    And(f1, f2, ...), Or(f1, f2, ...)

Values are str, int, float or bool. Fields name keys of ``Record.metadata``.
The JSON form accepted by the CLI and the API (``parse_filter``) is Mongo-like:
``{"lang": "zh"}``, ``{"page": {"$gte": 2, "$lt": 5}}``, ``{"kind": {"$in": ["a", "b"]}}``,
``{"kind": {"$ne": "a"}}``, ``{"$and": [...]}``, ``{"$or": [...]}``; several keys in one
object are and-ed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from stores.errors import DimensionMismatch, InvalidInput

Scalar: TypeAlias = str | int | float | bool
Metadata: TypeAlias = dict[str, Any]


@dataclass(frozen=True)
class Record:
    """One vector with its text and metadata, as written to a store."""

    id: str
    vector: np.ndarray
    text: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One query result. ``score`` is higher-is-better (cosine similarity for our stores)."""

    id: str
    score: float
    text: str
    metadata: Metadata


@dataclass(frozen=True)
class Eq:
    field: str
    value: Scalar


@dataclass(frozen=True)
class Ne:
    field: str
    value: Scalar


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    field: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class And:
    clauses: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    clauses: tuple[Filter, ...]


Filter: TypeAlias = Eq | Ne | In | Range | And | Or


@runtime_checkable
class VectorStore(Protocol):
    """A vector store holding one knowledge base's chunks."""

    @property
    def dim(self) -> int | None:
        """Vector dimension, or None while the store is empty and has not fixed it yet."""
        ...

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records by id. Durable when it returns."""
        ...

    def query(self, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        """The ``k`` nearest records, best first."""
        ...

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int:
        """Delete by ids and/or filter (both given: records matching either). Returns the count."""
        ...

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked."""
        ...

    def count(self, filter: Filter | None = None) -> int:
        """Number of records (matching ``filter`` when given)."""
        ...

    def drop(self) -> None:
        """Delete everything the store holds, including its files or collection."""
        ...

    def close(self) -> None:
        """Release files, connections and memory."""
        ...


def matches(flt: Filter | None, metadata: Mapping[str, Any]) -> bool:
    """Evaluate a filter against one metadata mapping (the reference semantics)."""
    if flt is None:
        return True
    if isinstance(flt, Eq):
        return flt.field in metadata and metadata[flt.field] == flt.value
    if isinstance(flt, Ne):
        return flt.field not in metadata or metadata[flt.field] != flt.value
    if isinstance(flt, In):
        return flt.field in metadata and metadata[flt.field] in flt.values
    if isinstance(flt, Range):
        value = metadata.get(flt.field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (
            (flt.gt is None or value > flt.gt)
            and (flt.gte is None or value >= flt.gte)
            and (flt.lt is None or value < flt.lt)
            and (flt.lte is None or value <= flt.lte)
        )
    if isinstance(flt, And):
        return all(matches(c, metadata) for c in flt.clauses)
    if isinstance(flt, Or):
        return any(matches(c, metadata) for c in flt.clauses)
    raise InvalidInput(f"unknown filter clause {flt!r}")


_RANGE_OPS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, str | int | float | bool):
        return value
    raise InvalidInput(f"filter value for {where!r} must be a string, number or boolean")


def parse_filter(spec: Mapping[str, Any] | None) -> Filter | None:
    """Parse the JSON filter form (see module docstring) into filter values."""
    if spec is None or len(spec) == 0:
        return None
    if not isinstance(spec, Mapping):
        raise InvalidInput("a filter must be a JSON object")
    clauses: list[Filter] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidInput(f"{key} takes a non-empty list of filters")
            parts = [p for p in (parse_filter(v) for v in value) if p is not None]
            clauses.append(And(tuple(parts)) if key == "$and" else Or(tuple(parts)))
        elif key.startswith("$"):
            raise InvalidInput(f"unknown filter operator {key!r}")
        elif isinstance(value, Mapping):
            clauses.extend(_parse_field_ops(key, value))
        else:
            clauses.append(Eq(key, _scalar(value, key)))
    return clauses[0] if len(clauses) == 1 else And(tuple(clauses))


def _parse_field_ops(name: str, ops: Mapping[str, Any]) -> list[Filter]:
    out: list[Filter] = []
    bounds: dict[str, float] = {}
    for op, value in ops.items():
        if op == "$eq":
            out.append(Eq(name, _scalar(value, name)))
        elif op == "$ne":
            out.append(Ne(name, _scalar(value, name)))
        elif op in ("$in", "$nin"):
            if not isinstance(value, list) or not value:
                raise InvalidInput(f"{op} on {name!r} takes a non-empty list")
            values = tuple(_scalar(v, name) for v in value)
            if op == "$in":
                out.append(In(name, values))
            else:
                out.append(And(tuple(Ne(name, v) for v in values)))
        elif op in _RANGE_OPS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{op} on {name!r} takes a number")
            bounds[_RANGE_OPS[op]] = value
        else:
            raise InvalidInput(f"unknown filter operator {op!r} on {name!r}")
    if bounds:
        out.append(Range(name, **bounds))
    return out


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows (float32); zero rows stay zero."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def prepare_upsert(records: Sequence[Record]) -> tuple[list[Record], np.ndarray]:
    """Validate a batch for upsert: a repeated id keeps its last record; vectors normalized.

    Every backend stores unit vectors and scores by inner product, so a score is the cosine
    similarity whatever the engine's own metric is called.
    """
    latest = {r.id: r for r in records}
    recs = list(latest.values())
    for r in recs:
        if not isinstance(r.id, str) or not r.id:
            raise InvalidInput("record ids must be non-empty strings")
    dims = {np.asarray(r.vector).size for r in recs}
    if len(dims) > 1:
        raise DimensionMismatch(f"one upsert mixes vector dimensions {sorted(dims)}")
    vecs = normalize(np.stack([np.asarray(r.vector, dtype=np.float32).ravel() for r in recs]))
    return recs, vecs


def check_dimension(expected: int | None, got: int, where: str) -> None:
    """Raise ``DimensionMismatch`` when a vector's dimension differs from the store's."""
    if expected is not None and got != expected:
        raise DimensionMismatch(
            f"vector dimension {got} does not match the store's dimension {expected} "
            f"({where}); use a store made for this embedding model"
        )


def query_vector(vector: np.ndarray, k: int) -> np.ndarray:
    """Validate ``k`` and return the query as one normalized float32 row."""
    if k <= 0:
        raise InvalidInput("k must be positive")
    return normalize(np.asarray(vector, dtype=np.float32).ravel())[0]
