"""Ingestion against the bare encode when the model is fast: a simulation, on any machine.

    .venv/bin/python -m bench.simulated_gpu --us-per-token 1.0,3.5 --datasets cmrc2018-dev

On a GPU the model no longer hides the CPU work around it. This bench shows that work
without a GPU: the embedder's forward pass is replaced by a wait of ``--us-per-token``
microseconds per token position of the batch (in 100 sleeps, which let go of the GIL the
way CUDA calls do), returning random unit vectors; the tokenizing, the batching and the
whole ingestion around it are the real ones. The bare side is the same wait over the same
chunks, each batch tokenized by the model as ``encode`` does, sorted by length, in batches of
128 (the GPU default). About 1.0 us per token matches all-MiniLM-L6-v2 in float32 on an
H200 host (cmrc2018-dev's bare encode: 0.95 s there, 1.0 s simulated here). It is a model
of a GPU, not a measurement of one: the real figures come from ``bench.retrieval --device
cuda``. Prints a line per turn and writes ``bench/results/simulated-gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DATA, RESULTS, machine, warm_ingest

_SLEEPS = 100  # pieces of one batch's wait
_BATCH = 128


def _wait_forward(us_per_token: float, dim: int) -> Callable[[Any, Any], np.ndarray]:
    def forward(self: Any, features: Any) -> np.ndarray:
        ids = features["input_ids"]
        for _ in range(_SLEEPS):
            time.sleep(ids.shape[0] * ids.shape[1] * us_per_token * 1e-6 / _SLEEPS)
        vectors = np.random.default_rng().random((ids.shape[0], dim), dtype=np.float32)
        return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))

    return forward


def run(name: str, us_per_token: float, turns: int, prepare_workers: int = 0
        ) -> dict[str, Any]:
    from ingest.embedding import SentenceTransformerEmbedder
    from rag.engine import RAG
    from rag.evaluation import load_dataset, write_passages
    from rag.settings import Settings

    real = SentenceTransformerEmbedder._forward
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rag = RAG.from_settings(Settings(data_dir=work / "data", _env_file=None,
                                         embedding={"device": "cpu", "batch_size": _BATCH},
                                         ingest={"prepare_workers": prepare_workers}))
        embedder: Any = rag.embedder
        try:
            embedder.warm_up()
            SentenceTransformerEmbedder._forward = _wait_forward(  # type: ignore[method-assign,assignment]
                us_per_token, embedder.dim)
            paths = write_passages(load_dataset(DATA / name), work / "docs")
            warm_ingest(rag, paths)
            ours, bare, chunks = [], [], 0
            for t in range(turns):
                rag.create_kb(f"t{t}")
                start = time.perf_counter()
                chunks = rag.ingest(paths, kb=f"t{t}").chunks_written
                ours.append(time.perf_counter() - start)
                texts = [c.text for d in rag.list_documents(f"t{t}", limit=10**6)
                         for c in rag.catalog.list_chunks(d.id, 0, 10**6)]
                order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
                start = time.perf_counter()
                for s in range(0, len(order), _BATCH):
                    batch = [texts[i] for i in order[s : s + _BATCH]]
                    embedder._forward(embedder._tokenize(batch))
                bare.append(time.perf_counter() - start)
                print(f"[{name}] {us_per_token} us/token, turn {t + 1}: ours {ours[-1]:.2f} s, "
                      f"bare {bare[-1]:.2f} s, ratio {bare[-1] / ours[-1]:.2f}", flush=True)
        finally:
            SentenceTransformerEmbedder._forward = real  # type: ignore[method-assign]
            rag.close()
    ratios = [b / o for o, b in zip(ours, bare, strict=True)]
    return {"us_per_token": us_per_token, "chunks": chunks, "ours_s": [round(x, 3) for x in ours],
            "bare_s": [round(x, 3) for x in bare], "ratios": [round(r, 3) for r in ratios],
            "median_ratio": round(statistics.median(ratios), 3)}


def main(argv: list[str] | None = None, out_dir: Path = RESULTS) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="squad-v2-dev,cmrc2018-dev")
    parser.add_argument("--us-per-token", default="1.0,3.5",
                        help="the simulated forward's microseconds per token position")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--prepare-workers", type=int, default=0,
                        help="processes that parse and chunk files (IngestConfig)")
    parser.add_argument("--out", default="simulated-gpu")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "datasets": {}}
    for name in args.datasets.split(","):
        results["datasets"][name] = [run(name, float(us), args.turns, args.prepare_workers)
                                     for us in args.us_per_token.split(",")]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
