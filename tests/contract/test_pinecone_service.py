"""The Pinecone store against the real service: runs only when PINECONE_API_KEY is set.

It creates a small serverless index (``RAG_TEST_PINECONE_INDEX``, default ``rag-contract``;
cloud and region from ``RAG_TEST_PINECONE_CLOUD``/``_REGION``, default aws/us-east-1), runs in
a fresh namespace, and deletes what it created. The service is eventually consistent, so
every read after a write is polled until it reflects the write (at most 90 s).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from stores import open_store
from stores.base import Eq, Record
from stores.errors import DimensionMismatch
from tests.store_servers import REAL_PINECONE_KEY

DIM = 8
pytestmark = pytest.mark.skipif(
    not REAL_PINECONE_KEY,
    reason="PINECONE_API_KEY is not set: the Pinecone service test needs a real account "
           "(the emulator suite in test_store_contract.py covers the store here)",
)


def _eventually(check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the service did not reflect the write in time")
        time.sleep(2)


@pytest.fixture
def index_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from pinecone import Pinecone, ServerlessSpec

    monkeypatch.setenv("PINECONE_API_KEY", REAL_PINECONE_KEY)
    name = os.environ.get("RAG_TEST_PINECONE_INDEX", "rag-contract")
    pc = Pinecone(api_key=REAL_PINECONE_KEY)
    created = False
    if not pc.has_index(name):
        spec = ServerlessSpec(cloud=os.environ.get("RAG_TEST_PINECONE_CLOUD", "aws"),
                              region=os.environ.get("RAG_TEST_PINECONE_REGION", "us-east-1"))
        pc.create_index(name, spec=spec, dimension=DIM, metric="cosine")
        created = True
    yield name
    if created:
        pc.delete_index(name)


def test_store_on_the_pinecone_service(index_name: str) -> None:
    url = f"pinecone://{index_name}?namespace=t-{uuid.uuid4().hex[:10]}&timeout=30"
    store = open_store(url)
    rng = np.random.default_rng(0)
    recs = [Record(f"r{i}", rng.normal(size=DIM), f"文本 {i}", {"lang": "zh" if i % 2 else "en"})
            for i in range(20)]
    try:
        store.upsert(recs)
        _eventually(lambda: store.count() == 20)
        _eventually(lambda: bool(store.query(recs[3].vector, 1))
                    and store.query(recs[3].vector, 1)[0].id == "r3")
        assert store.get(["r5"])[0].text == "文本 5"
        assert store.count(Eq("lang", "zh")) == 10
        with pytest.raises(DimensionMismatch):
            store.query(np.ones(DIM + 1), 1)
        assert store.delete(filter=Eq("lang", "en")) == 10
        _eventually(lambda: store.count() == 10)
    finally:
        store.drop()
        store.close()
