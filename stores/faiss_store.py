"""FAISS backend: ``faiss:///dir?index=hnsw|ivf|flat&...``, inner product on normalized vectors.

Row ``r`` of the vector matrix is FAISS label ``r``. Replacing or deleting a record
tombstones its row; queries exclude tombstones (and rows failing a filter) with an
``IDSelector``, or score the allowed rows exactly when they are few. When tombstones pass
a third of the rows, the next snapshot compacts the matrix and rebuilds the index.

Several processes may open the same directory (the CLI beside a running server): every
operation takes an ``flock`` on ``dir/LOCK`` and first replays what other processes logged.

FAISS parallelises with OpenMP, and when torch was imported first its calls bind to torch's
OpenMP runtime. A thread that has run a parallel FAISS loop keeps its OpenMP workers as long
as it lives; the runtime then counts more threads than cores and throttles the spin-wait of
every team, the embedding model's included: on 2 cores a MiniLM query took 12.2 ms instead
of 5.4 ms for as long as the thread that had built an HNSW index (or run one flat search)
lived. So index builds run on a thread that ends with them, and searches, one query at a
time, on the caller's thread with one OpenMP thread (a flat search of 100,000 vectors took
9.6 ms on one thread against 13.5 ms on two).
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from stores import faiss_log as log
from stores.base import (
    Filter,
    Hit,
    Record,
    check_dimension,
    matches,
    prepare_upsert,
    query_vector,
)
from stores.errors import InvalidInput, MissingDependency, StoreUnavailable
from stores.urls import StoreURL

_EXACT_LIMIT = 4096  # at most this many allowed rows: score them exactly instead of the ANN index
_MIN_LOG_BYTES = 4 << 20


@dataclass(frozen=True)
class FaissParams:
    """Index parameters parsed from the store URL."""

    index: str = "hnsw"
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 1024
    nprobe: int = 16
    device: str = "cpu"
    dim: int | None = None
    flat_until: int = _EXACT_LIMIT


def open_url(url: str) -> FaissStore:
    """Open ``faiss:///dir?index=hnsw|ivf|flat&m=&ef_construction=&ef_search=&nlist=&nprobe=
    &device=cpu|gpu&flat_until=``. A store of at most ``flat_until`` vectors (4,096 by
    default) is searched exactly, with no index built: a scan of that many takes well under
    a millisecond, and an HNSW graph of them took cmrc2018-dev's ingestion 0.3 s on 2 cores
    (its 2,163 chunks), more than all its catalog writes."""
    u = StoreURL(url)
    params = FaissParams(
        index=u.str_param("index", "hnsw").lower(),
        m=u.int_param("m", 32),
        ef_construction=u.int_param("ef_construction", 200),
        ef_search=u.int_param("ef_search", 128),
        nlist=u.int_param("nlist", 1024),
        nprobe=u.int_param("nprobe", 16),
        device=u.str_param("device", "cpu").lower(),
        dim=u.optional_int_param("dim"),
        flat_until=u.int_param("flat_until", _EXACT_LIMIT, minimum=0),
    )
    u.finish()
    path = u.file_path()
    if not str(path) or str(path) == ".":
        raise InvalidInput(f"faiss URL needs a directory: {url!r}")
    return FaissStore(path, params)


T = TypeVar("T")


def _on_own_thread(build: Callable[[], T]) -> T:
    """Run an index build step on a thread that ends with it, taking its OpenMP workers along."""
    with ThreadPoolExecutor(1, thread_name_prefix="faiss-build") as pool:
        return pool.submit(build).result()


@contextmanager
def _one_omp_thread(faiss: Any) -> Iterator[None]:
    """FAISS's OpenMP thread count of the calling thread at 1 (the setting is per thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise MissingDependency("The FAISS store", "faiss") from exc
    return faiss


class FaissStore:
    """A persistent FAISS index with payloads, deletions and metadata filters."""

    def __init__(self, path: Path, params: FaissParams) -> None:
        if params.index not in ("hnsw", "ivf", "flat"):
            raise InvalidInput(f"faiss index must be hnsw, ivf or flat, not {params.index!r}")
        self._faiss = _faiss()
        if params.device == "gpu":
            self._check_gpu(params)
        elif params.device != "cpu":
            raise InvalidInput(f"faiss device must be cpu or gpu, not {params.device!r}")
        self.path = Path(path)
        self.params = params
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fh = open(self.path / "LOCK", "a+")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise StoreUnavailable(f"cannot open FAISS store at {self.path}: {exc}") from exc
        self._snap_path = self.path / "snapshot.npz"
        self._log_path = self.path / "wal.log"
        self._mutex = threading.RLock()
        self._gpu_index: Any = None
        self._reset()
        self._loaded_key: tuple[int, int] | None = None
        self._log_offset = 0

    # -- the VectorStore protocol ---------------------------------------------------------

    @property
    def dim(self) -> int | None:
        with self._locked(write=False):
            return self._dim

    def upsert(self, records: Sequence[Record]) -> None:
        if not records:
            return
        recs, vecs = prepare_upsert(records)
        with self._locked(write=True):
            self._check_dim(vecs.shape[1])
            ids = [r.id for r in recs]
            texts = [r.text for r in recs]
            metas = [dict(r.metadata) for r in recs]
            self._log_offset = log.append(
                self._log_path, log.encode_upsert(ids, texts, metas, vecs)
            )
            self._apply_upsert(ids, texts, metas, vecs)
            self._maybe_snapshot()

    def query(self, vector: np.ndarray, k: int, filter: Filter | None = None) -> list[Hit]:
        q = query_vector(vector, k)[None, :]
        with self._locked(write=False):
            if self._live == 0:
                return []
            self._check_dim(q.shape[1])
            rows, scores = self._search(q, k, filter)
            return [
                Hit(self._row_ids[r] or "", float(s), self._texts[r], dict(self._meta[r]))
                for r, s in zip(rows, scores, strict=True)
            ]

    def delete(self, ids: Sequence[str] | None = None, filter: Filter | None = None) -> int:
        if ids is None and filter is None:
            raise InvalidInput("delete needs ids or a filter")
        with self._locked(write=True):
            doomed = {i for i in (ids or []) if i in self._id_to_row}
            if filter is not None:
                doomed.update(self._row_ids[r] or "" for r in self._live_rows(filter))
            if not doomed:
                return 0
            self._log_offset = log.append(self._log_path, log.encode_delete(sorted(doomed)))
            self._apply_delete(doomed)
            self._maybe_snapshot()
            return len(doomed)

    def get(self, ids: Sequence[str]) -> list[Record]:
        with self._locked(write=False):
            out = []
            for i in ids:
                r = self._id_to_row.get(i)
                if r is not None:
                    out.append(Record(i, self._vecs[r].copy(), self._texts[r], dict(self._meta[r])))
            return out

    def count(self, filter: Filter | None = None) -> int:
        with self._locked(write=False):
            if filter is None:
                return self._live
            return len(self._live_rows(filter))

    def iter_records(self, batch_size: int = 1000) -> Iterator[list[Record]]:
        """Every live record, in batches (used to migrate a knowledge base between stores)."""
        with self._locked(write=False):
            rows = self._live_rows()
            snapshot = [
                Record(self._row_ids[r] or "", self._vecs[r].copy(), self._texts[r],
                       dict(self._meta[r]))
                for r in rows
            ]
        for start in range(0, len(snapshot), batch_size):
            yield snapshot[start : start + batch_size]

    def drop(self) -> None:
        with self._locked(write=True):
            for name in ("snapshot.npz", "wal.log", "snapshot.tmp"):
                (self.path / name).unlink(missing_ok=True)
            self._reset()
            self._loaded_key, self._log_offset = None, 0

    def close(self) -> None:
        with self._mutex:
            if self._lock_fh.closed:
                return
            with self._locked(write=True):
                if self._log_offset > 0:
                    self._write_snapshot()
            self._lock_fh.close()

    # -- state ----------------------------------------------------------------------------

    def _reset(self) -> None:
        self._dim: int | None = self.params.dim
        self._vecs = np.zeros((0, self._dim or 0), dtype=np.float32)
        self._nrows = 0
        self._row_ids: list[str | None] = []
        self._texts: list[str] = []
        self._meta: list[dict[str, Any]] = []
        self._id_to_row: dict[str, int] = {}
        self._live = 0
        self._index: Any = None
        self._index_kind = "flat"
        self._gpu_index = None

    @contextmanager
    def _locked(self, write: bool) -> Iterator[None]:
        with self._mutex:
            if self._lock_fh.closed:
                raise StoreUnavailable(f"FAISS store at {self.path} is closed")
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                self._sync()
                if write:  # bytes past the last whole entry are a torn append: cut them
                    log.truncate(self._log_path, self._log_offset)
                yield
            finally:
                fcntl.flock(self._lock_fh, fcntl.LOCK_UN)

    def _sync(self) -> None:
        """Catch up with what this or another process wrote since we last looked."""
        key = None
        if self._snap_path.exists():
            st = self._snap_path.stat()
            key = (st.st_ino, st.st_mtime_ns)
        if key != self._loaded_key:
            self._reset()
            if key is not None:
                try:
                    self._load_snapshot(log.read_snapshot(self._snap_path))
                except (OSError, ValueError, KeyError) as exc:
                    raise StoreUnavailable(
                        f"FAISS snapshot {self._snap_path} is unreadable: {exc}"
                    ) from exc
            self._loaded_key, self._log_offset = key, 0
        entries, end = log.read_entries(self._log_path, self._log_offset)
        for e in entries:
            if e.kind == log.UPSERT and e.vectors is not None:
                self._check_dim(e.vectors.shape[1])
                self._apply_upsert(e.ids, e.texts, e.metadata, e.vectors)
            else:
                self._apply_delete(set(e.ids))
        self._log_offset = end

    def _check_dim(self, dim: int) -> None:
        if self._dim is None:
            self._dim = dim
            self._vecs = np.zeros((0, dim), dtype=np.float32)
        else:
            check_dimension(self._dim, dim, str(self.path))

    def _apply_upsert(
        self, ids: list[str], texts: list[str], metas: list[dict[str, Any]], vecs: np.ndarray
    ) -> None:
        self._apply_delete({i for i in ids if i in self._id_to_row})
        start = self._nrows
        need = start + len(ids)
        if need > self._vecs.shape[0]:
            grown = np.zeros((max(need, 2 * self._vecs.shape[0], 256), vecs.shape[1]), np.float32)
            grown[:start] = self._vecs[:start]
            self._vecs = grown
        self._vecs[start:need] = vecs
        self._nrows = need
        for offset, (i, t, m) in enumerate(zip(ids, texts, metas, strict=True)):
            self._row_ids.append(i)
            self._texts.append(t)
            self._meta.append(m)
            self._id_to_row[i] = start + offset
        self._live += len(ids)
        if self._index is not None:
            index, added = self._index, np.ascontiguousarray(vecs)
            _on_own_thread(lambda: index.add(added))
            self._gpu_index = None
        self._maybe_upgrade_ivf()

    def _live_rows(self, flt: Filter | None = None) -> list[int]:
        """Rows of live records (matching ``flt`` when given), in row order."""
        return [
            r for r, rid in enumerate(self._row_ids)
            if rid is not None and (flt is None or matches(flt, self._meta[r]))
        ]

    def _apply_delete(self, ids: set[str]) -> None:
        for i in ids:
            r = self._id_to_row.pop(i, None)
            if r is not None:
                self._row_ids[r] = None
                self._live -= 1

    # -- index ------------------------------------------------------------------------------

    def _ivf_ready(self) -> bool:
        return self._live >= self.params.nlist * 39  # FAISS wants ~39 training points per list

    def _maybe_upgrade_ivf(self) -> None:
        if self.params.index == "ivf" and self._index_kind != "ivf" and self._ivf_ready():
            self._compact()
            self._index = None
            self._index_kind = "ivf"

    def _ensure_index(self) -> Any:
        if self._index is None:
            assert self._dim is not None
            f = self._faiss
            kind = self.params.index
            if kind == "hnsw":
                index = f.IndexHNSWFlat(self._dim, self.params.m, f.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = self.params.ef_construction
            elif kind == "ivf" and self._ivf_ready():
                quantizer = f.IndexFlatIP(self._dim)
                index = f.IndexIVFFlat(quantizer, self._dim, self.params.nlist,
                                       f.METRIC_INNER_PRODUCT)
                _on_own_thread(lambda: index.train(self._vecs[self._live_rows()]))
                index.nprobe = self.params.nprobe
                self._index_kind = "ivf"
            else:
                index = f.IndexFlatIP(self._dim)
                kind = "flat"
            if self._nrows:
                rows = np.ascontiguousarray(self._vecs[: self._nrows])
                _on_own_thread(lambda: index.add(rows))
            self._index, self._index_kind = index, kind
        return self._index

    def _search(self, q: np.ndarray, k: int, flt: Filter | None) -> tuple[list[int], list[float]]:
        f = self._faiss
        tombstones = self._nrows - self._live
        allowed: np.ndarray | None = None
        if flt is not None or tombstones:
            allowed = np.asarray(self._live_rows(flt), dtype=np.int64)
            if allowed.size == 0:
                return [], []
            if allowed.size <= max(_EXACT_LIMIT, self.params.flat_until):
                return self._exact(allowed, q, k)
        elif self._index is None and self._nrows <= self.params.flat_until:
            return self._exact(None, q, k)
        index = self._ensure_index()
        kk = min(k, self._live if allowed is None else int(allowed.size))
        sel = f.IDSelectorBatch(allowed) if allowed is not None else None
        if self._index_kind == "hnsw":
            params: Any = f.SearchParametersHNSW(efSearch=max(self.params.ef_search, kk))
        elif self._index_kind == "ivf":
            params = f.SearchParametersIVF(nprobe=self.params.nprobe)
        else:
            params = f.SearchParameters()
        if sel is not None:
            params.sel = sel
        target = self._gpu_search_index(index) if sel is None else index
        with _one_omp_thread(f):
            scores, labels = target.search(q, kk, params=params if target is index else None)
        pairs = [(int(lab), float(s)) for lab, s in zip(labels[0], scores[0], strict=True)
                 if lab >= 0 and self._row_ids[lab] is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _exact(self, rows: np.ndarray | None, q: np.ndarray, k: int
               ) -> tuple[list[int], list[float]]:
        """The ``k`` best of ``rows`` (of all rows when None), scored exactly by FAISS on this
        thread alone. Not numpy's matrix product: it wakes BLAS's threads, whose spinning
        then slowed the embedding model's queries on 2 cores from 6.2 ms to 14 ms."""
        f = self._faiss
        vectors = self._vecs[: self._nrows] if rows is None else self._vecs[rows]
        with _one_omp_thread(f):
            scores, found = f.knn(q, np.ascontiguousarray(vectors), min(k, len(vectors)),
                                  metric=f.METRIC_INNER_PRODUCT)
        picked = found[0][found[0] >= 0]
        labels = picked if rows is None else rows[picked]
        return labels.tolist(), scores[0][: len(picked)].tolist()

    def _gpu_search_index(self, index: Any) -> Any:
        if self.params.device != "gpu":
            return index
        if self._gpu_index is None:
            f = self._faiss
            self._gpu_res = getattr(self, "_gpu_res", None) or f.StandardGpuResources()
            self._gpu_index = f.index_cpu_to_gpu(self._gpu_res, 0, index)
        return self._gpu_index

    def _check_gpu(self, params: FaissParams) -> None:
        f = self._faiss
        if not hasattr(f, "StandardGpuResources") or f.get_num_gpus() == 0:
            raise StoreUnavailable(
                "device=gpu asked for a FAISS GPU index, but this faiss build sees no GPU; "
                "install faiss-gpu on a CUDA machine or drop device=gpu"
            )
        if params.index == "hnsw":
            raise InvalidInput("FAISS has no GPU HNSW index: use index=flat or index=ivf on GPU")

    # -- persistence ---------------------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        snap_size = self._snap_path.stat().st_size if self._snap_path.exists() else 0
        if self._log_offset > max(_MIN_LOG_BYTES, snap_size):
            self._write_snapshot()

    def _compact(self) -> None:
        live = self._live_rows()
        self._vecs = np.ascontiguousarray(self._vecs[live])
        self._row_ids = [self._row_ids[r] for r in live]
        self._texts = [self._texts[r] for r in live]
        self._meta = [self._meta[r] for r in live]
        self._nrows = len(live)
        self._id_to_row = {rid: r for r, rid in enumerate(self._row_ids) if rid is not None}
        self._index, self._gpu_index = None, None

    def _write_snapshot(self) -> None:
        if self._nrows - self._live > self._nrows / 3:
            self._compact()
        index_bytes = None
        if self._index is not None or self._nrows > self.params.flat_until:
            index_bytes = self._faiss.serialize_index(self._ensure_index()).tobytes()
        log.write_snapshot(
            self._snap_path,
            log.Snapshot(self._vecs[: self._nrows], list(self._row_ids), list(self._texts),
                         list(self._meta), index_bytes, self._index_kind),
        )
        log.truncate(self._log_path, 0)
        st = self._snap_path.stat()
        self._loaded_key, self._log_offset = (st.st_ino, st.st_mtime_ns), 0

    def _load_snapshot(self, snap: log.Snapshot) -> None:
        if snap.vectors.shape[0]:
            self._check_dim(snap.vectors.shape[1])
        self._vecs = snap.vectors
        self._nrows = snap.vectors.shape[0]
        self._row_ids, self._texts, self._meta = snap.ids, snap.texts, snap.metadata
        self._id_to_row = {rid: r for r, rid in enumerate(self._row_ids) if rid is not None}
        self._live = len(self._id_to_row)
        if snap.index_bytes and snap.index_kind in (self.params.index, "flat"):
            buf = np.frombuffer(snap.index_bytes, dtype=np.uint8)
            self._index = self._faiss.deserialize_index(buf)
            self._index_kind = snap.index_kind
            if self._index_kind == "hnsw":
                self._index.hnsw.efSearch = self.params.ef_search
        self._maybe_upgrade_ivf()

