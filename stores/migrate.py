"""Copy records between two vector stores without re-embedding, and check the copy."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

from stores.base import VectorStore
from stores.errors import Conflict, DimensionMismatch


def check_target(target: VectorStore, dim: int, where: str) -> None:
    """A migration target must be empty and, when it has fixed a dimension, match ours."""
    held = target.count()
    if held:
        raise Conflict(f"the target store {where} already holds {held} vectors: "
                       "migrate into an empty store (a new collection, namespace or directory)")
    if target.dim is not None and target.dim != dim:
        raise DimensionMismatch(
            f"the target store {where} has dimension {target.dim}, the knowledge base {dim}"
        )


def copy_records(source: VectorStore, target: VectorStore, ids: Sequence[str],
                 batch_size: int = 500,
                 progress: Callable[[int, int], None] | None = None) -> int:
    """Copy the records ``ids`` from ``source`` to ``target`` in batches; returns the count.

    Raises ``Conflict`` when the source lacks a record the caller expects.
    """
    done = 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        records = source.get(batch)
        if len(records) != len(batch):
            missing = sorted(set(batch) - {r.id for r in records})
            raise Conflict(
                f"{len(missing)} vectors recorded in the catalog are missing from the source "
                f"store (for example {', '.join(missing[:3])}); run an ingest to repair it first"
            )
        target.upsert(records)
        done += len(records)
        if progress is not None:
            progress(done, len(ids))
    return done


def verify_copy(source: VectorStore, target: VectorStore, ids: Sequence[str],
                sample: int = 64) -> None:
    """The target holds exactly ``ids``, and a sample of records matches the source."""
    held = target.count()
    if held != len(ids):
        raise Conflict(f"the copy holds {held} vectors, expected {len(ids)}")
    picked = random.Random(0).sample(list(ids), min(sample, len(ids)))
    theirs = {r.id: r for r in target.get(picked)}
    for rec in source.get(picked):
        copy = theirs.get(rec.id)
        if copy is None or copy.text != rec.text or copy.metadata != rec.metadata:
            raise Conflict(f"record {rec.id} differs between the source and the copy")
        a = np.asarray(rec.vector, dtype=np.float32)
        b = np.asarray(copy.vector, dtype=np.float32)
        a, b = a / (np.linalg.norm(a) or 1), b / (np.linalg.norm(b) or 1)
        if not np.allclose(a, b, atol=1e-4):
            raise Conflict(f"the vector of record {rec.id} differs between source and copy")
