import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stores import open_store
from stores.base import Eq, Range, Record
from stores.errors import DimensionMismatch, InvalidInput, StoreUnavailable
from stores.faiss_store import FaissStore

DIM = 16


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def rec(i: int, **meta: object) -> Record:
    return Record(f"id{i}", vec(i), f"text {i}", {"n": i, **meta})


URLS = {  # flat_until=0: each index is built and searched, however few the vectors
    "hnsw": "faiss://{}?index=hnsw&m=8&flat_until=0",
    "flat": "faiss://{}?index=flat&flat_until=0",
    "ivf": "faiss://{}?index=ivf&nlist=2&nprobe=2&flat_until=0",
    "exact": "faiss://{}",  # the default: under 4,096 vectors, exact scans and no index
}


@pytest.fixture(params=sorted(URLS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return URLS[request.param].format(tmp_path / "store")


def test_upsert_query_replace_delete(url: str) -> None:
    store = open_store(url)
    assert store.count() == 0
    store.upsert([rec(i, even=i % 2 == 0) for i in range(200)])
    assert store.count() == 200
    assert store.dim == DIM
    hits = store.query(vec(7), 3)
    assert hits[0].id == "id7" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].score >= hits[1].score >= hits[2].score
    store.upsert([Record("id7", vec(1000), "replaced", {"n": 7})])
    assert store.count() == 200
    assert store.get(["id7"])[0].text == "replaced"
    assert store.query(vec(1000), 1)[0].id == "id7"
    assert store.delete(ids=["id1", "id2", "nope"]) == 2
    assert store.get(["id1", "id3"])[0].id == "id3"
    assert store.delete(filter=Eq("even", True)) == 99  # id2 is already gone
    assert store.count() == 99
    assert all(not h.metadata["even"] for h in store.query(vec(4), 20))
    assert store.count(Range("n", lt=10)) == 4  # 3, 5, 7, 9
    filtered = store.query(vec(5), 5, Range("n", gte=5, lte=9))
    assert next(h.id for h in filtered) == "id5"
    assert {h.id for h in filtered} <= {"id5", "id7", "id9"}
    store.close()


def test_persistence_and_wal_replay(url: str) -> None:
    a = open_store(url)
    a.upsert([rec(i) for i in range(50)])
    a.delete(ids=["id3"])
    # a second process-like instance sees the logged writes without a close()
    b = open_store(url)
    assert b.count() == 49 and b.query(vec(10), 1)[0].id == "id10"
    b.upsert([rec(100)])
    assert a.count() == 50  # a catches up with b's write
    a.close()
    b.close()
    c = open_store(url)
    assert c.count() == 50 and c.get(["id3"]) == [] and c.get(["id100"])[0].text == "text 100"
    c.close()


def test_torn_log_tail_is_ignored(tmp_path: Path) -> None:
    url = URLS["flat"].format(tmp_path / "s")
    s = open_store(url)
    s.upsert([rec(i) for i in range(5)])
    with open(tmp_path / "s" / "wal.log", "ab") as fh:
        fh.write(b"UPSR\x00\x10\x00\x00garbage")  # a crash mid-append
    t = open_store(url)
    assert t.count() == 5
    t.upsert([rec(9)])
    assert open_store(url).count() == 6


def test_catching_up_reads_only_what_was_logged_since(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from stores import faiss_log

    url = URLS["flat"].format(tmp_path / "s")
    a, b = open_store(url), open_store(url)
    a.upsert([Record(f"big{i}", vec(i), "x" * 2000, {}) for i in range(500)])
    assert b.count() == 500
    read: list[int] = []

    class Spy:
        def __init__(self, *args: Any) -> None:
            self.fh = open(*args)  # noqa: SIM115 (closed by __exit__)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

        def __enter__(self) -> "Spy":
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def read(self, *args: Any) -> bytes:
            data: bytes = self.fh.read(*args)
            read.append(len(data))
            return data

    monkeypatch.setattr(faiss_log, "open", Spy, raising=False)
    assert b.query(vec(3), 1)[0].id == "big3"
    assert sum(read) == 0  # nothing new: the log's 1 MB is not read again
    a.upsert([rec(1)])
    assert b.get(["id1"])[0].text == "text 1"
    assert 0 < sum(read) < 1000  # just the new entry
    a.close()
    b.close()


_NO_WORKERS_LEFT = """
import os, sys, time
import numpy as np
from stores import open_store
from stores.base import Record
threads = lambda: len(os.listdir("/proc/self/task"))
store = open_store(sys.argv[1])
before = threads()
many = np.random.default_rng(0).standard_normal((20_000, 16)).astype(np.float32)
store.upsert([Record(f"r{i}", v, "", {}) for i, v in enumerate(many)])
assert store.query(many[1], 5)[0].id == "r1"  # a flat search of this many rows is parallel
store.upsert([Record(f"s{i}", v, "", {}) for i, v in enumerate(many[:100] + 1)])
assert store.query(many[50] + 1, 5)[0].id == "s50"
deadline = time.monotonic() + 5
while threads() > before and time.monotonic() < deadline:
    time.sleep(0.05)  # the workers of a build thread leave shortly after it ends
print(before, threads())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2,
                    reason="counts threads in /proc; OpenMP starts no workers on one core")
def test_faiss_leaves_no_openmp_workers_behind(url: str) -> None:
    """A thread that ran a parallel FAISS loop (an index build, a flat search of many rows)
    would keep its OpenMP workers while it lives, and slow every other OpenMP team in the
    process (the embedding model's) down. In a process of its own, to count its threads."""
    out = subprocess.run([sys.executable, "-c", _NO_WORKERS_LEFT, url], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.split()
    assert after == before


def test_dimension_mismatch_is_typed(url: str) -> None:
    store = open_store(url)
    store.upsert([rec(1)])
    with pytest.raises(DimensionMismatch, match="dimension 8"):
        store.upsert([Record("x", np.ones(8, np.float32), "x", {})])
    with pytest.raises(DimensionMismatch):
        store.query(np.ones(8, np.float32), 1)


def test_ivf_trains_when_enough_vectors(tmp_path: Path) -> None:
    store = open_store(f"faiss://{tmp_path / 's'}?index=ivf&nlist=4&nprobe=4&flat_until=0")
    assert isinstance(store, FaissStore)
    store.upsert([rec(i) for i in range(100)])
    assert store._index_kind == "flat"  # 100 < 4 * 39 training points
    store.upsert([rec(i) for i in range(100, 200)])
    assert store._index_kind == "ivf"
    assert store.query(vec(150), 1)[0].id == "id150"


def test_drop_and_bad_urls(tmp_path: Path) -> None:
    store = open_store(f"faiss://{tmp_path / 's'}")
    store.upsert([rec(1)])
    store.drop()
    assert store.count() == 0 and store.query(vec(1), 1) == []
    with pytest.raises(InvalidInput, match="unknown vector store URL scheme"):
        open_store("nosuch://x")
    with pytest.raises(InvalidInput, match="index must be"):
        open_store(f"faiss://{tmp_path}/x?index=lsh")
    with pytest.raises(InvalidInput, match="unknown faiss URL parameters"):
        open_store(f"faiss://{tmp_path}/x?bogus=1")
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        with pytest.raises(StoreUnavailable, match="GPU"):
            open_store(f"faiss://{tmp_path}/x?index=flat&device=gpu")


def test_a_small_store_is_searched_exactly_without_an_index(tmp_path: Path) -> None:
    """Up to ``flat_until`` vectors no index is built, on upsert, snapshot or search, and the
    hits are the exact ones; past it the HNSW graph is built on the next search and kept in
    the snapshot, so a reopened store does not build it again."""
    rng = np.random.default_rng(7)
    data = rng.standard_normal((120, 8)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    url = f"faiss://{tmp_path / 's'}?index=hnsw&m=8&flat_until=100"
    store = open_store(url)
    assert isinstance(store, FaissStore)
    store.upsert([Record(f"r{i}", v, f"t{i}", {"n": i}) for i, v in enumerate(data[:100])])
    store._write_snapshot()
    for q in data[:10]:
        exact = np.argsort(-(data[:100] @ q), kind="stable")[:5]
        assert [h.id for h in store.query(q, 5)] == [f"r{i}" for i in exact]
    assert store._index is None
    store.upsert([Record(f"r{i}", v, f"t{i}", {"n": i}) for i, v in enumerate(data[100:], 100)])
    assert store._index is None  # built when a search needs it
    assert store.query(data[110], 1)[0].id == "r110"
    assert store._index is not None and store._index_kind == "hnsw"
    store.close()
    again = open_store(url)
    assert isinstance(again, FaissStore)
    assert again.count() == 120 and again._index is not None  # from the snapshot
    assert again.query(data[3], 1)[0].id == "r3"
    again.close()
