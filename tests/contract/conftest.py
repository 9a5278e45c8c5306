"""One ``store`` fixture over every backend, each on a real engine started here.

FAISS runs in process; Milvus Lite in its own process (pymilvus starts it); a real Milvus
2.3 standalone server from the ``milvus`` PyPI package in its own virtualenv (``make test``
builds ``.venv/milvus-server``); Chroma embedded and a ``chroma run`` server; Pinecone
through the real SDK against ``tests/pinecone_emulator.py``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stores import VectorStore, open_store
from stores.errors import StoreUnavailable

DIM = 8


@dataclass
class StoreCase:
    """A backend under test: how to open it, and what it can be asked."""

    backend: str
    url: str
    server: bool = False  # talks to a server process (so it can be unreachable)
    approximate: bool = False  # quantized index: scores are approximate
    opened: list[VectorStore] = field(default_factory=list)

    def open(self) -> VectorStore:
        store = open_store(self.url)
        self.opened.append(store)
        return store


BACKENDS = ["faiss-hnsw", "faiss-ivf", "faiss-flat", "milvus-lite", "milvus-server",
            "chroma", "chroma-server", "pinecone"]


def _case(backend: str, request: pytest.FixtureRequest, tmp: Path) -> StoreCase:
    name = f"t{uuid.uuid4().hex[:12]}"
    if backend.startswith("faiss-"):
        kind = backend.split("-")[1]
        extra = "&nlist=4" if kind == "ivf" else ""  # flat_until=0: the index, however few
        return StoreCase(backend, f"faiss://{tmp / name}?index={kind}{extra}&flat_until=0")
    if backend == "milvus-lite":
        db = request.getfixturevalue("milvus_lite_db")
        return StoreCase(backend, f"milvus://{db}?collection={name}&index=IVF_FLAT&nlist=4")
    if backend == "milvus-server":
        host = request.getfixturevalue("milvus_server")
        return StoreCase(backend, f"milvus://{host}?collection={name}&index=HNSW",
                         server=True)
    if backend == "chroma":
        return StoreCase(backend, f"chroma://{tmp / 'chroma'}?collection={name}")
    if backend == "chroma-server":
        host = request.getfixturevalue("chroma_server")
        return StoreCase(backend, f"chroma+http://{host}?collection={name}", server=True)
    if backend == "pinecone":
        host = request.getfixturevalue("pinecone_emulators").host(DIM)
        return StoreCase(backend, f"pinecone://contract?host={host}&namespace={name}",
                         server=True)
    raise AssertionError(backend)


@pytest.fixture(params=BACKENDS)
def case(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreCase]:
    if request.param == "chroma":
        _forbid_chroma_default_embeddings(monkeypatch)
    c = _case(request.param, request, tmp_path)
    yield c
    for opened in c.opened:
        with contextlib.suppress(Exception):
            opened.close()
    with contextlib.suppress(StoreUnavailable):  # a test may have made it unreachable
        leftover = open_store(c.url)
        leftover.drop()
        leftover.close()


@pytest.fixture
def store(case: StoreCase) -> VectorStore:
    return case.open()


def _forbid_chroma_default_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chroma's default embedding function downloads a model: any call fails the test."""
    from chromadb.api import types

    def refuse(*_args: object, **_kwargs: object) -> Callable[..., object]:
        raise AssertionError("Chroma's default embedding function was called")

    monkeypatch.setattr(types.DefaultEmbeddingFunction, "__call__", refuse)
