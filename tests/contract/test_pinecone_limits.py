"""Pinecone's request limits, enforced by the emulator, respected by the store."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from stores import open_store
from stores.base import Record
from stores.errors import InvalidInput
from stores.pinecone_store import MAX_METADATA_BYTES, MAX_REQUEST_BYTES, _upsert_batches
from tests.store_servers import PineconeEmulators

DIM = 8


@pytest.fixture
def url(pinecone_emulators: PineconeEmulators) -> str:
    return f"pinecone://limits?host={pinecone_emulators.host(DIM)}&namespace=n{uuid.uuid4().hex}"


def test_batches_stay_within_count_and_size_limits() -> None:
    items = [{"id": f"v{i}", "values": [0.1] * DIM, "metadata": {"_text": "x" * 3000}}
             for i in range(2500)]
    batches = list(_upsert_batches(items))
    assert sum(len(b) for b in batches) == 2500
    assert all(len(b) <= 1000 for b in batches)
    import json

    assert all(len(json.dumps({"vectors": b})) < MAX_REQUEST_BYTES for b in batches)


def test_large_upsert_and_huge_text(url: str) -> None:
    store = open_store(url)
    rng = np.random.default_rng(1)
    recs = [Record(f"r{i}", rng.normal(size=DIM), "文" * 400, {"i": i}) for i in range(2500)]
    store.upsert(recs)  # 2500 vectors, ~3 MB of JSON: several requests
    assert store.count() == 2500
    huge = Record("huge", rng.normal(size=DIM), "长" * 30_000, {"document_name": "big.txt"})
    store.upsert([huge])
    (got,) = store.get(["huge"])
    assert got.text and huge.text.startswith(got.text)
    assert len(got.text.encode()) < MAX_METADATA_BYTES
    assert got.metadata == {"document_name": "big.txt"}, "the truncation flag stays internal"
    assert store.query(huge.vector, 1)[0].id == "huge"
    with pytest.raises(InvalidInput, match="metadata values"):
        store.upsert([Record("bad", rng.normal(size=DIM), "x", {"nested": {"a": 1}})])
    with pytest.raises(InvalidInput, match="reserved"):
        store.upsert([Record("bad", rng.normal(size=DIM), "x", {"_text": "sneaky"})])
    store.drop()
    store.close()
