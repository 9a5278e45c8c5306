"""Query latency through the API, next to the bare model encode + index search, in one run.

    .venv/bin/python -m bench.latency                 # 300 SQuAD passages, 200 questions

1. Our pipeline ingests ``--passages`` SQuAD passages (default settings: MiniLM, FAISS
   HNSW, hybrid retrieval), then a uvicorn process serves the API on 127.0.0.1.
2. ``POST /v1/search`` (retrieval only) and ``POST /v1/ask`` (retrieval + SmolLM2 answer,
   ``--max-tokens`` new tokens) at 1 and 8 concurrent clients: p50 / p99 latency, requests/s.
   The server's own ``retrieval_ms`` is recorded too.
3. The bare limit, in this process: ``SentenceTransformer.encode`` of the question plus the
   raw FAISS index search over the same vectors, one at a time. At 1 client it takes turns
   with the API, 20 questions each, so both see the same machine (timings here move by 30%
   from one minute to the next).
   /search at 1 client is measured twice: first in a server that only retrieves, then
   after /ask has loaded the generator (and its scheduler thread, with its PyTorch threads,
   has ended idle).
4. Overhead = our p50 over the bare p50, for the API round trip (1 client) and for the
   server-side retrieval time, per retrieval mode, for both servers.

Writes ``bench/results/latency.json`` and ``latency.png`` (``--out`` names them). ``--dataset``
takes another set of ../shared/data (``--dataset scifact-test --passages 5183``: a larger
knowledge base, whose BM25 search weighs more in hybrid).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import DATA, RESULTS, machine, pct
from rag.evaluation import load_dataset, write_passages

KB = "/v1/knowledge-bases/bench"


def load(url: str, path: str, bodies: list[dict[str, Any]], clients: int, raw: bool = False
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
    if raw:
        return {"latencies": latencies, "server_ms": server_ms, "wall_s": wall}
    return {"clients": clients, "requests": len(latencies), "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99), "requests_per_s": round(len(latencies) / wall, 2),
            "server_retrieval_p50_ms": pct(server_ms, 0.5)}


class Bare:
    """The limit: the model's ``encode`` of the question and the raw FAISS search, nothing
    else, on this thread."""

    def __init__(self, rag: Any, kb: str) -> None:
        self.model = rag.embedder.model
        store = rag.indexes(rag.get_kb(kb)).vectors
        self.index = store._ensure_index()  # the raw faiss index, searched as our store does
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = max(store.params.ef_search, 30)
        self.encode_ms: list[float] = []
        self.search_ms: list[float] = []

    def fresh(self) -> Bare:
        """The same model and index, with no timings yet."""
        other = copy.copy(self)
        other.encode_ms, other.search_ms = [], []
        return other

    def run(self, questions: list[str]) -> None:
        for q in questions:
            t0 = time.perf_counter()
            vec = self.model.encode([q], normalize_embeddings=True, show_progress_bar=False)
            t1 = time.perf_counter()
            self.index.search(vec, 30)
            t2 = time.perf_counter()
            self.encode_ms.append((t1 - t0) * 1000)
            self.search_ms.append((t2 - t1) * 1000)

    def summary(self) -> dict[str, Any]:
        total = [a + b for a, b in zip(self.encode_ms, self.search_ms, strict=True)]
        return {"encode_p50_ms": pct(self.encode_ms, 0.5),
                "search_p50_ms": pct(self.search_ms, 0.5),
                "p50_ms": pct(total, 0.5), "p99_ms": pct(total, 0.99)}


def one_client(url: str, limit: Bare, questions: list[str], block: int = 20
               ) -> dict[str, Any]:
    """One client, in turns of ``block`` questions: the bare limit, then /search dense, then
    hybrid. Each is measured under the same conditions of a noisy machine, side by side."""
    parts: dict[str, list[dict[str, Any]]] = {"dense": [], "hybrid": []}
    for start in range(0, len(questions), block):
        chunk = questions[start : start + block]
        limit.run(chunk)
        for mode, runs in parts.items():
            runs.append(load(url, f"{KB}/search", [{"query": q, "mode": mode} for q in chunk],
                             1, raw=True))
    rows = {}
    for mode, runs in parts.items():
        latencies = [ms for r in runs for ms in r["latencies"]]
        server = [ms for r in runs for ms in r["server_ms"]]
        wall = sum(r["wall_s"] for r in runs)
        rows[f"search {mode}, 1 client"] = {
            "clients": 1, "requests": len(latencies), "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99), "requests_per_s": round(len(latencies) / wall, 2),
            "server_retrieval_p50_ms": pct(server, 0.5)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="squad-v2-dev")
    parser.add_argument("--passages", type=int, default=300)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--ask-questions", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="latency", help="writes bench/results/OUT.json, .png")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rag.engine import RAG
    from rag.settings import Settings
    from tests.servers import python, serve_api

    dataset = load_dataset(DATA / args.dataset)
    dataset = type(dataset)(dataset.name, dataset.path, dataset.passages[: args.passages],
                            dataset.questions)
    ids = {p["id"] for p in dataset.passages}
    questions = [q.question for q in dataset.sample(None)
                 if set(q.gold) & ids][: args.questions]
    results: dict[str, Any] = {"machine": machine(),
                               "dataset": args.dataset,
                               "passages": len(dataset.passages), "questions": len(questions)}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        data = Path(tmp) / "data"
        rag = RAG.from_settings(Settings(data_dir=data, _env_file=None))
        rag.create_kb("bench")
        report = rag.ingest(write_passages(dataset, Path(tmp) / "docs"), kb="bench")
        results["chunks"] = report.chunks_written
        # The bare encode runs on this thread alone: stop our model thread first, as two
        # threads' OpenMP teams on 2 cores slow each other down.
        getattr(rag.embedder, "close", lambda: None)()
        limit = Bare(rag, "bench")
        rag.close()
        with serve_api("api", data, {}, timeout=300) as url:
            for q in questions[:5]:  # warm the server's model and indexes, and this process's
                httpx.post(f"{url}{KB}/search", json={"query": q}, timeout=600)
            limit.run(questions[:5])
            limit.encode_ms.clear()
            limit.search_ms.clear()
            rows = one_client(url, limit, questions)
            results["bare"] = limit.summary()
            print(f"python {python()}; bare: {results['bare']}", flush=True)
            for key, row in rows.items():
                print(key, row, flush=True)
            for q in questions[:5]:  # load the generator: it shares the 2 cores from now on
                httpx.post(f"{url}{KB}/ask", json={"query": q, "max_tokens": 4}, timeout=600)
            time.sleep(3)  # the generator's scheduler thread ends 2 s after its last request
            after = limit.fresh()
            for key, row in one_client(url, after, questions).items():
                rows[f"{key}, generator loaded"] = row
                print(f"{key}, generator loaded", row, flush=True)
            results["bare, generator loaded in the server"] = after.summary()
            print("bare:", results["bare, generator loaded in the server"], flush=True)
            for mode in ("dense", "hybrid"):
                key = f"search {mode}, 8 clients"
                rows[key] = load(url, f"{KB}/search", [{"query": q, "mode": mode}
                                                       for q in questions], 8)
                print(key, rows[key], flush=True)
            asks = [{"query": q, "max_tokens": args.max_tokens}
                    for q in questions[: args.ask_questions]]
            for clients in (1, 8):
                key = f"ask hybrid, {clients} client{'s' if clients > 1 else ''}"
                rows[key] = load(url, f"{KB}/ask", asks, clients)
                print(key, rows[key], flush=True)
    results["api"] = rows
    b = results["bare"]["p50_ms"]
    results["overhead"] = {}
    for suffix, bare_key in (("", "bare"), (", generator loaded",
                                           "bare, generator loaded in the server")):
        b = results[bare_key]["p50_ms"]
        for mode in ("dense", "hybrid"):
            row = rows[f"search {mode}, 1 client{suffix}"]
            results["overhead"][f"{mode}{suffix}"] = {
                "api_round_trip_over_bare": round(row["p50_ms"] / b, 2),
                "server_retrieval_over_bare": round(row["server_retrieval_p50_ms"] / b, 2)}
    print(json.dumps(results, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / f"{args.out}.png")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in results["api"].items() if k.startswith("search")}
    labels = ["bare encode\n+ FAISS", *[k.replace(", ", "\n") for k in rows]]
    p50 = [results["bare"]["p50_ms"], *[v["p50_ms"] for v in rows.values()]]
    p99 = [results["bare"]["p99_ms"], *[v["p99_ms"] for v in rows.values()]]
    fig, ax = plt.subplots(figsize=(11, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50", color="#2f6fec")
    ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99", color="#9aa4b2")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"retrieval latency, {results.get('dataset', 'squad-v2-dev')} "
                 f"({results['chunks']:,} chunks), {results['machine']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
