"""Where an ingestion's time goes: the wall time of each step on the ingesting thread.

    .venv/bin/python -m bench.ingest_steps --datasets cmrc2018-dev --device cuda

On a GPU the model no longer hides the rest of ingestion, and this tells which step to work
on next (on an H200 host, cmrc2018-dev's keyword index writes took 0.89-1.16 s of its 2.2-2.4 s).
Each turn ingests every passage of a set into a new knowledge base with the default settings,
after an untimed warm-up turn of 50 passages. The steps overlap nothing on this thread, so
they add up to the turn; what is left ("waiting and the rest") is mostly waiting for the model
and the keyword tokens, which run in other threads. Prints a table and writes
``bench/results/ingest-steps.{json,png}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.common import DATA, RESULTS, machine, warm_ingest

STEPS = [  # (where, method, label): timed when the ingesting thread calls them
    ("pipeline", "_read", "read files"),
    ("pipeline", "_prepare_here", "parse, tokenize and chunk files"),
    ("catalog", "chunk_ids_of", "catalog: chunks already there"),
    ("catalog", "begin_documents", "catalog: documents begun"),
    ("catalog", "finish_documents", "catalog: chunks and documents finished"),
    ("catalog", "update_job", "catalog: job progress"),
    ("vectors", "upsert", "vector store upsert"),
    ("keywords", "upsert", "keyword index upsert"),
]
WRITE_GROUP = "write a group (all of it)"


@contextmanager
def _timed(owner: Any, method: str, label: str, acc: dict[str, float],
           thread: threading.Thread) -> Iterator[None]:
    """Add the wall time of ``owner.method`` calls made by ``thread`` to ``acc[label]``."""
    original = getattr(owner, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not thread:
            return original(*args, **kwargs)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            acc[label] += time.perf_counter() - start

    setattr(owner, method, wrapper)
    try:
        yield
    finally:
        if isinstance(owner, type):
            setattr(owner, method, original)
        else:
            delattr(owner, method)  # the instance's own attribute: back to the class's


def turn(rag: Any, kb: str, paths: list[Path]) -> dict[str, Any]:
    """One ingestion into a new knowledge base, with the seconds of each step."""
    from ingest.pipeline import IngestPipeline
    from ingest.write import GroupWriter

    base = rag.create_kb(kb)
    indexes = rag.indexes(base)
    owners: dict[str, Any] = {"pipeline": IngestPipeline, "catalog": rag.catalog,
                              "vectors": indexes.vectors, "keywords": indexes.keywords}
    acc: dict[str, float] = defaultdict(float)
    me = threading.current_thread()
    with ExitStack() as stack:
        for where, method, label in STEPS:
            stack.enter_context(_timed(owners[where], method, label, acc, me))
        stack.enter_context(_timed(GroupWriter, "write", WRITE_GROUP, acc, me))
        start = time.perf_counter()
        report = rag.ingest(paths, kb=kb)
        total = time.perf_counter() - start
    steps = {label: round(acc[label], 3) for _, _, label in STEPS}
    steps["waiting and the rest"] = round(total - sum(acc[lab] for _, _, lab in STEPS), 3)
    steps[WRITE_GROUP] = round(acc[WRITE_GROUP], 3)  # the catalog and store steps, waiting
    return {"seconds": round(total, 3), "chunks": report.chunks_written, "steps": steps}


def run(name: str, turns: int, device: str, precision: str) -> dict[str, Any]:
    from rag.engine import RAG
    from rag.evaluation import load_dataset, write_passages
    from rag.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = Settings(data_dir=work / "data", _env_file=None,
                            embedding={"device": device, "precision": precision})
        rag = RAG.from_settings(settings)
        try:
            rag.embedder.warm_up()  # type: ignore[attr-defined]
            paths = write_passages(load_dataset(DATA / name), work / "docs")
            warm_ingest(rag, paths)
            runs = []
            for t in range(turns):
                runs.append(turn(rag, f"steps-{t}", paths))
                print(f"[{name}] turn {t + 1}: {runs[-1]['seconds']:.2f} s", flush=True)
            on = getattr(rag.embedder, "device", None) or "cpu"
            return {"passages": len(paths), "device": on,
                    "precision": settings.embedding.resolved_precision(on), "turns": runs}
        finally:
            rag.close()


def table(name: str, result: dict[str, Any]) -> str:
    turns = result["turns"]
    lines = [f"{name} ({result['passages']} passages, {turns[0]['chunks']} chunks, "
             f"{result['device']} {result['precision']}): "
             + ", ".join(f"{t['seconds']:.2f}" for t in turns) + " s"]
    for label in turns[0]["steps"]:
        values = [t["steps"][label] for t in turns]
        lines.append(f"  {label:<40} " + "  ".join(f"{v:6.3f}" for v in values))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        turns = results["datasets"][name]["turns"]
        labels = [k for k in turns[0]["steps"] if k != WRITE_GROUP]
        medians = [statistics.median(t["steps"][k] for t in turns) for k in labels]
        ax.barh(range(len(labels)), medians, color="#2f6fec")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (median of the turns)")
        ax.set_title(f"{name}: ingestion steps, "
                     f"{statistics.median(t['seconds'] for t in turns):.2f} s in all", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None,
         out_dir: Path = RESULTS, show: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="squad-v2-dev,cmrc2018-dev")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--precision", default="auto", help="auto, float32, float16, bfloat16")
    parser.add_argument("--out", default="ingest-steps")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine(), "datasets": {}}
    for name in args.datasets.split(","):
        results["datasets"][name] = run(name, args.turns, args.device, args.precision)
        show(table(name, results["datasets"][name]))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    plot(results, out_dir / f"{args.out}.png")
    return results


if __name__ == "__main__":
    main()
