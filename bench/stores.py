"""Vector store benchmark: recall@10 against exact search, and queries per second, for each
backend and index type, on clustered synthetic vectors and on real MiniLM embeddings of the
../shared/data passages. Writes a JSON file and a recall-vs-QPS plot.

    .venv/bin/python -m bench.stores                    # 100k x 384 + SQuAD + SciFact
    .venv/bin/python -m bench.stores --n 20000 --datasets clustered --backends faiss

Every query goes through our ``VectorStore`` API (what the engine pays), one at a time, with
``k=10``. Exact top-10 comes from a NumPy inner product over the same normalized vectors.
Timings are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import DATA, RESULTS, machine
from stores import open_store
from stores.base import Record, normalize
from stores.errors import RagError

K = 10


@dataclass
class Result:
    dataset: str
    backend: str
    index: str
    search: str
    n: int
    dim: int
    build_s: float
    insert_per_s: float
    recall_at_10: float
    qps: float
    p50_ms: float
    p99_ms: float


@dataclass
class Config:
    backend: str
    index: str
    build_url: str  # {loc} is replaced by a fresh location
    variants: list[tuple[str, str]]  # (label, extra URL parameters for searching)


def clustered(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors around ``n/100`` random centres (embeddings cluster by topic); queries are
    drawn the same way and held out."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 100), dim)).astype(np.float32)
    def draw(m: int) -> np.ndarray:
        pick = rng.integers(0, len(centres), size=m)
        return normalize(centres[pick] + 0.35 * rng.normal(size=(m, dim)).astype(np.float32))
    return draw(n), draw(queries)


def real(name: str, queries: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of a shared data set's passages and of its questions (cached)."""
    folder = DATA / name
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name}-{queries}.npz"
    if target.exists():
        z = np.load(target)
        return z["x"], z["q"]
    from ingest.config import EmbeddingConfig
    from ingest.embedding import SentenceTransformerEmbedder

    passages = [json.loads(line) for line in (folder / "passages.jsonl").open()]
    questions = [json.loads(line) for line in (folder / "questions.jsonl").open()][:queries]
    emb = SentenceTransformerEmbedder(EmbeddingConfig())
    x = emb.embed_documents([f"{p['title']}\n{p['text']}" for p in passages])
    q = np.stack([emb.embed_query(item["question"]) for item in questions])
    np.savez(target, x=x, q=q)
    return normalize(x), normalize(q)


def exact_top(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(q), 256):
        scores = q[start : start + 256] @ x.T
        out.append(np.argsort(-scores, axis=1)[:, :K])
    return np.concatenate(out)


def configs(n: int, which: set[str], milvus_host: str | None) -> list[Config]:
    nlist = max(16, min(1024, int(4 * np.sqrt(n))))
    out: list[Config] = []
    if "faiss" in which:
        out += [
            Config("faiss", "flat", "faiss://{loc}?index=flat", [("exact", "")]),
            Config("faiss", "hnsw", "faiss://{loc}?index=hnsw&m=32&ef_construction=200",
                   [(f"ef={e}", f"&ef_search={e}") for e in (16, 64, 256)]),
            Config("faiss", "ivf", f"faiss://{{loc}}?index=ivf&nlist={nlist}",
                   [(f"nprobe={p}", f"&nprobe={p}") for p in (1, 8, 32)]),
        ]
    milvus = []
    if "milvus-lite" in which:
        milvus.append(("milvus-lite", "milvus://{loc}.db?collection=bench"))
    if "milvus-server" in which and milvus_host:
        milvus.append(("milvus-server", f"milvus://{milvus_host}?collection=b{{loc_tag}}"))
    for backend, base in milvus:
        out += [
            Config(backend, "IVF_FLAT", base + f"&index=IVF_FLAT&nlist={nlist}",
                   [(f"nprobe={p}", f"&nprobe={p}") for p in (8, 32)]),
            Config(backend, "IVF_SQ8", base + f"&index=IVF_SQ8&nlist={nlist}",
                   [("nprobe=32", "&nprobe=32")]),
            Config(backend, "HNSW", base + "&index=HNSW&m=16&ef_construction=200",
                   [(f"ef={e}", f"&ef={e}") for e in (64, 256)]),
        ]
    if "chroma" in which:
        out.append(Config("chroma", "hnsw", "chroma://{loc}?collection=bench",
                          [("ef=100 (default)", "")]))
    return out


def _url(cfg: Config, loc: Path, tag: str, extra: str = "") -> str:
    return cfg.build_url.replace("{loc}", str(loc)).replace("{loc_tag}", tag) + extra


def run_config(cfg: Config, name: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray,
               work: Path) -> list[Result]:
    loc, tag = work / f"{cfg.backend}-{cfg.index}-{name}", uuid.uuid4().hex[:8]
    store = open_store(_url(cfg, loc, tag))
    started = time.perf_counter()
    for start in range(0, len(x), 1000):
        store.upsert([Record(f"v{i}", x[i], "", {}) for i in range(start, min(start + 1000,
                                                                              len(x)))])
    wait = getattr(store, "wait_indexed", None)
    if wait is not None:
        wait()
    build = time.perf_counter() - started
    if wait is not None:  # Milvus: let segments settle, and reads leave the Strong window
        time.sleep(15)
    store.close()
    results = []
    try:
        for label, extra in cfg.variants:
            if cfg.backend.startswith("milvus"):  # steady state: settled data, Bounded reads
                extra += "&consistency=bounded"
            s = open_store(_url(cfg, loc, tag, extra))
            s.query(q[0], K)  # warm: loads the index
            lat, found = [], []
            for vec in q:
                t0 = time.perf_counter()
                hits = s.query(vec, K)
                lat.append(time.perf_counter() - t0)
                found.append([int(h.id[1:]) for h in hits])
            recall = float(np.mean([len(set(f) & set(t.tolist())) / K
                                    for f, t in zip(found, truth, strict=True)]))
            results.append(Result(
                name, cfg.backend, cfg.index, label, len(x), x.shape[1], round(build, 2),
                round(len(x) / build, 1), round(recall, 4), round(len(q) / sum(lat), 1),
                round(float(np.percentile(lat, 50)) * 1000, 2),
                round(float(np.percentile(lat, 99)) * 1000, 2)))
            print(_row(results[-1]), flush=True)
            if label != cfg.variants[-1][0]:
                s.close()
        s.drop()
        s.close()
    finally:
        for leftover in (loc, Path(f"{loc}.db")):  # Milvus Lite 3 keeps a .db directory
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return results


def _row(r: Result) -> str:
    return (f"{r.dataset:<16} {r.backend:<14} {r.index:<9} {r.search:<17} "
            f"recall@10 {r.recall_at_10:.3f}  {r.qps:>8.1f} q/s  p99 {r.p99_ms:>7.2f} ms  "
            f"build {r.build_s:>7.1f} s ({r.insert_per_s:.0f}/s)")


@contextmanager
def milvus_server(enabled: bool, work: Path) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    from tests.servers import free_port, serve
    from tests.store_servers import MILVUS_SERVER_BIN

    if not MILVUS_SERVER_BIN.exists():
        print(f"milvus-server skipped: {MILVUS_SERVER_BIN} missing (make test builds it)")
        yield None
        return
    port = free_port()
    with serve("milvus-server", [str(MILVUS_SERVER_BIN), "--data", str(work / "milvus"),
                                 "--proxy-port", str(port)], port, work, timeout=180):
        time.sleep(8)  # the proxy port opens before the coordinators are ready
        yield f"127.0.0.1:{port}"


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r.dataset for r in results})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 5), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        series: dict[str, list[Result]] = {}
        for r in results:
            if r.dataset == ds:
                series.setdefault(f"{r.backend} {r.index}", []).append(r)
        for label, rs in sorted(series.items()):
            ax.plot([r.recall_at_10 for r in rs], [r.qps for r in rs], marker="o", label=label)
        n, dim = next((r.n, r.dim) for r in results if r.dataset == ds)
        ax.set(title=f"{ds} ({n:,} x {dim})", xlabel="recall@10 vs exact",
               ylabel="queries/s (one at a time, log)", yscale="log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--datasets", default="clustered,squad-v2-dev,scifact-test")
    ap.add_argument("--backends", default="faiss,milvus-lite,milvus-server,chroma")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    which = set(args.backends.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    failures: list[str] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-stores-")))
        host = stack.enter_context(milvus_server("milvus-server" in which, work))
        for name in args.datasets.split(","):
            if name == "clustered":
                x, q = clustered(args.n, args.dim, args.queries)
                label = f"clustered-{args.n // 1000}k"
            else:
                x, q = real(name, args.queries, args.out / "cache")
                label = name
            truth = exact_top(x, q)
            for cfg in configs(len(x), which, host):
                try:
                    results.extend(run_config(cfg, label, x, q, truth, work))
                except RagError as exc:  # report it and go on with the other backends
                    failures.append(f"{label} {cfg.backend} {cfg.index}: {exc}")
                    print(f"FAILED {failures[-1]}", flush=True)
    meta = {"failures": failures, "machine": machine(), "k": K,
            "pinecone": "not measured: only a local emulator is reachable here, and its "
                        "speed says nothing about the service",
            "command": "python -m bench.stores " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if k != "out")}
    target = args.out / "stores.json"  # merged by dataset: runs may cover different sets
    previous = json.loads(target.read_text()) if target.exists() else {"results": []}
    def key(r: Result) -> tuple[str, str, str, str]:
        return (r.dataset, r.backend, r.index, r.search)

    fresh = {key(r) for r in results}
    merged = [o for o in (Result(**r) for r in previous["results"]) if key(o) not in fresh]
    merged += results
    runs = [*previous.get("runs", []), {**meta, "datasets": sorted({r.dataset for r in results})}]
    target.write_text(json.dumps({"runs": runs, "results": [asdict(r) for r in merged]},
                                 indent=2))
    plot(merged, args.out / "stores.png")
    print(f"wrote {args.out / 'stores.json'} and {args.out / 'stores.png'}")


if __name__ == "__main__":
    main()
