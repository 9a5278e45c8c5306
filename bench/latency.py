"""Query latency through the API, next to the bare model encode + index search, in one run.

    .venv/bin/python -m bench.latency                 # 300 SQuAD passages, 200 questions

1. Our pipeline ingests ``--passages`` SQuAD passages (default settings: MiniLM, FAISS
   HNSW, hybrid retrieval), then a uvicorn process serves the API on 127.0.0.1.
2. ``POST /v1/search`` (retrieval only) and ``POST /v1/ask`` (retrieval + SmolLM2 answer,
   ``--max-tokens`` new tokens) at 1 and 8 concurrent clients: p50 / p99 latency, requests/s.
   The server's own ``retrieval_ms`` is recorded too.
3. The bare limit, in this process: ``SentenceTransformer.encode`` of the question plus the
   raw FAISS index search over the same vectors, one at a time.
4. Overhead = our p50 over the bare p50, for the API round trip (1 client) and for the
   server-side retrieval time, per retrieval mode.

Writes ``bench/results/latency.json`` and ``latency.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from rag.evaluation import load_dataset, write_passages

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "squad-v2-dev"
RESULTS = ROOT / "bench" / "results"
KB = "/v1/knowledge-bases/bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def load(url: str, path: str, bodies: list[dict[str, Any]], clients: int
         ) -> dict[str, Any]:
    """Send ``bodies`` from ``clients`` threads (each its own connection); latency per request."""
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    queue = list(bodies)

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                start = time.perf_counter()
                r = client.post(path, json=body)
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    latencies.append(ms)
                    payload = r.json()
                    payload = payload.get("answer", payload)  # /ask wraps the answer
                    server_ms.append(float(payload["timings"]["retrieval_ms"]))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return {"clients": clients, "requests": len(latencies), "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99), "requests_per_s": round(len(latencies) / wall, 2),
            "server_retrieval_p50_ms": pct(server_ms, 0.5)}


def bare(rag: Any, kb: str, questions: list[str]) -> dict[str, Any]:
    """The limit: the model's encode of the question and the raw FAISS search, nothing else."""
    model = rag.embedder.model
    store = rag.indexes(rag.get_kb(kb)).vectors
    index = store._ensure_index()  # the raw faiss index, searched as our store searches it
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(store.params.ef_search, 30)
    encode, search = [], []
    for q in questions:
        t0 = time.perf_counter()
        vec = model.encode([q], normalize_embeddings=True, show_progress_bar=False)
        t1 = time.perf_counter()
        index.search(vec, 30)
        t2 = time.perf_counter()
        encode.append((t1 - t0) * 1000)
        search.append((t2 - t1) * 1000)
    total = [a + b for a, b in zip(encode, search, strict=True)]
    return {"encode_p50_ms": pct(encode, 0.5), "search_p50_ms": pct(search, 0.5),
                    "p50_ms": pct(total, 0.5), "p99_ms": pct(total, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=300)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--ask-questions", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rag.engine import RAG
    from rag.settings import Settings
    from tests.servers import python, serve_api

    dataset = load_dataset(DATA)
    dataset = type(dataset)(dataset.name, dataset.path, dataset.passages[: args.passages],
                            dataset.questions)
    ids = {p["id"] for p in dataset.passages}
    questions = [q.question for q in dataset.sample(None)
                 if set(q.gold) & ids][: args.questions]
    results: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                               "passages": len(dataset.passages), "questions": len(questions)}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        data = Path(tmp) / "data"
        rag = RAG.from_settings(Settings(data_dir=data, _env_file=None))
        rag.create_kb("bench")
        report = rag.ingest(write_passages(dataset, Path(tmp) / "docs"), kb="bench")
        results["chunks"] = report.chunks_written
        results["bare"] = bare(rag, "bench", questions)
        rag.close()
        print(f"python {python()}; bare: {results['bare']}", flush=True)
        with serve_api("api", data, {}, timeout=300) as url:
            for q in questions[:5]:  # warm the server: model, indexes, generator
                httpx.post(f"{url}{KB}/ask", json={"query": q, "max_tokens": 4}, timeout=600)
            rows: dict[str, Any] = {}
            for mode in ("dense", "hybrid"):
                bodies = [{"query": q, "mode": mode} for q in questions]
                for clients in (1, 8):
                    key = f"search {mode}, {clients} client{'s' if clients > 1 else ''}"
                    rows[key] = load(url, f"{KB}/search", bodies, clients)
                    print(key, rows[key], flush=True)
            asks = [{"query": q, "max_tokens": args.max_tokens}
                    for q in questions[: args.ask_questions]]
            for clients in (1, 8):
                key = f"ask hybrid, {clients} client{'s' if clients > 1 else ''}"
                rows[key] = load(url, f"{KB}/ask", asks, clients)
                print(key, rows[key], flush=True)
    results["api"] = rows
    b = results["bare"]["p50_ms"]
    results["overhead"] = {
        mode: {"api_round_trip_over_bare": round(rows[f"search {mode}, 1 client"]["p50_ms"] / b, 2),
               "server_retrieval_over_bare": round(
                   rows[f"search {mode}, 1 client"]["server_retrieval_p50_ms"] / b, 2)}
        for mode in ("dense", "hybrid")}
    print(json.dumps(results, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "latency.png")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in results["api"].items() if k.startswith("search")}
    labels = ["bare encode\n+ FAISS", *[k.replace(", ", "\n") for k in rows]]
    p50 = [results["bare"]["p50_ms"], *[v["p50_ms"] for v in rows.values()]]
    p99 = [results["bare"]["p99_ms"], *[v["p99_ms"] for v in rows.values()]]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50", color="#2f6fec")
    ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99", color="#9aa4b2")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"retrieval latency, {results['machine']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
