"""Session fixtures for the store servers the tests start: a Milvus 2.3 standalone server,
a ``chroma run`` server, Pinecone data-plane emulators (one per vector dimension), and a
Milvus Lite database file. Loaded as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import REPO, free_port, port_open, python, serve

PINECONE_KEY = "test-pinecone-key"
# The user's own key, read before the emulator fixtures point PINECONE_API_KEY at the emulator.
REAL_PINECONE_KEY = os.environ.get("PINECONE_API_KEY", "")
MILVUS_SERVER_BIN = Path(
    os.environ.get("RAG_TEST_MILVUS_SERVER", REPO / ".venv" / "milvus-server" / "bin"
                   / "milvus-server")
)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not MILVUS_SERVER_BIN.exists():
        pytest.skip(f"Milvus server not installed at {MILVUS_SERVER_BIN}: `make test` builds it "
                    "(pip install milvus==2.3.5 in its own virtualenv)")
    from pymilvus import MilvusClient

    busy = [p for p in (2379, 2380) if port_open(p)]
    if busy:  # the embedded etcd of milvus 2.3 listens on fixed ports
        raise RuntimeError(f"port(s) {busy} in use: another Milvus or etcd is running here; "
                           "stop it to run the Milvus server tests")
    port = free_port()
    data = tmp_path_factory.mktemp("milvus-server")

    def ready() -> bool:
        try:
            MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=2).close()
            return True
        except Exception:
            return False

    with serve("milvus-server", [str(MILVUS_SERVER_BIN), "--data", str(data),
                                 "--proxy-port", str(port)], port, data, ready=ready,
               timeout=180):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import httpx

    chroma = Path(python()).parent / "chroma"
    port = free_port()
    data = tmp_path_factory.mktemp("chroma-server")

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).is_success
        except httpx.HTTPError:
            return False

    with serve("chroma-server", [str(chroma), "run", "--host", "127.0.0.1", "--port", str(port),
                                 "--path", str(data / "db")], port, data, ready=ready):
        yield f"127.0.0.1:{port}"


class PineconeEmulators:
    """Pinecone emulators started on demand, one per index dimension (an index has one)."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._stack = contextlib.ExitStack()
        self._hosts: dict[int, str] = {}

    def host(self, dim: int) -> str:
        os.environ["PINECONE_API_KEY"] = PINECONE_KEY
        if dim not in self._hosts:
            port = free_port()
            self._stack.enter_context(serve(
                f"pinecone-emulator-{dim}",
                [python(), "-m", "tests.pinecone_emulator", "--port", str(port),
                 "--dimension", str(dim), "--api-key", PINECONE_KEY],
                port, self._logs, env={"PYTHONPATH": str(REPO)}))
            self._hosts[dim] = f"http://127.0.0.1:{port}"
        return self._hosts[dim]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def pinecone_emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PineconeEmulators]:
    emulators = PineconeEmulators(tmp_path_factory.mktemp("pinecone"))
    yield emulators
    emulators.close()


@pytest.fixture(scope="session")
def milvus_lite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("milvus-lite") / "tests.db"
