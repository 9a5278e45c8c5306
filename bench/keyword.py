"""Keyword (BM25) search: our in-memory ranking against SQLite FTS5's ``bm25()``, side by side.

    .venv/bin/python -m bench.keyword                 # SciFact x1 and x5, CMRC, SQuAD

Each set's passages (``--copies`` times over, each copy its own rows, so the index grows
without new words) go into a fresh ``KeywordIndex``. Then, for ``--questions`` of its
questions, one at a time, the top 30:

- ours: ``KeywordIndex.search``, the ranking in memory (``stores.bm25``);
- FTS5: the search as it was before, ``bm25()`` in one FTS5 query and each row's share of
  the query terms, over the same file.

Reported: p50 / p99 of each and their ratio, whether both rank alike (the same scores, the
same ids above the last one), the first search's time (it reads the rows into memory), the
memory that takes (traced in a separate read), and the snapshot of those arrays: the time to
write it, its size, and the time a new ``KeywordIndex`` takes to open and read it instead of
the rows. Writes ``bench/results/keyword.json`` and ``keyword.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.common import DATA, RESULTS, machine, pct
from rag.evaluation import load_dataset
from stores.keyword import KeywordIndex
from stores.tokens import tokenize

K = 30


def fts5_search(index: KeywordIndex, query: str, k: int) -> list[tuple[str, float, float]]:
    """The search before the in-memory ranking: FTS5's ``bm25()`` orders every matching row,
    the best rows' columns are read after, and each hit's coverage is counted in its tokens."""
    terms = list(dict.fromkeys(tokenize(query)))
    if not terms:
        return []
    match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
    rows = index._db.execute(
        "SELECT c.id, c.metadata, c.tokens, best.s FROM (SELECT rowid, bm25(chunks) AS s "
        "FROM chunks WHERE chunks MATCH ? ORDER BY s LIMIT ?) AS best "
        "JOIN chunks AS c ON c.rowid = best.rowid ORDER BY best.s", (match, k)).fetchall()
    spaced = [f" {t} " for t in terms]
    hits = []
    for cid, _meta, tokens, score in rows:
        row = f" {tokens} "
        hits.append((cid, -float(score), sum(1 for t in spaced if t in row) / len(terms)))
    return hits


def same_ranking(ours: list[Any], theirs: list[tuple[str, float, float]]) -> bool:
    """The same scores in the same order (to 1e-6), and the same ids above the last score:
    rows tied there (a passage's copies) may be cut differently."""
    a, b = [h.score for h in ours], [s for _, s, _ in theirs]
    if len(a) != len(b):
        return False
    if any(abs(x - y) > 1e-6 * max(1.0, abs(y)) for x, y in zip(a, b, strict=True)):
        return False
    if not a:
        return True
    last = b[-1] + 1e-6 * max(1.0, abs(b[-1]))
    return ({h.id for h in ours if h.score > last}
            == {cid for cid, s, _ in theirs if s > last})


def run(name: str, copies: int, questions: int, work: Path) -> dict[str, Any]:
    dataset = load_dataset(DATA / name)
    path = work / f"{name}-x{copies}.sqlite"
    index = KeywordIndex(path)
    items = [(f"{p['id']}#{c}", p["text"], {"document_id": f"{p['id']}#{c}"})
             for c in range(copies) for p in dataset.passages]
    start = time.perf_counter()
    for i in range(0, len(items), 2000):
        index.upsert(items[i : i + 2000])
    write_s = time.perf_counter() - start
    asked = [q.question for q in dataset.sample(questions)]
    index.SNAPSHOT_AFTER_S = float("inf")  # the read alone; the snapshot after, timed apart
    start = time.perf_counter()
    index.warm()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    with index._lock:
        assert index._memory is not None
        index._write_snapshot(index._memory)
    snapshot_write_s = time.perf_counter() - start
    ours_s, fts5_s, agree = [], [], 0
    for q in asked:  # side by side, question by question
        t0 = time.perf_counter()
        mine = index.search(q, K)
        t1 = time.perf_counter()
        theirs = fts5_search(index, q, K)
        t2 = time.perf_counter()
        ours_s.append(t1 - t0)
        fts5_s.append(t2 - t1)
        agree += same_ranking(mine, theirs)
    ours_ms, fts5_ms = [s * 1000 for s in ours_s], [s * 1000 for s in fts5_s]
    rows = index.count()
    index.close()
    snapshot_mb = index.snapshot.stat().st_size / 2**20
    start = time.perf_counter()
    reopened = KeywordIndex(path)  # what a later process does: the snapshot, not the rows
    reopened.warm()
    snapshot_read_s = time.perf_counter() - start
    reopened.close()
    index.snapshot.unlink()
    tracemalloc.start()
    again = KeywordIndex(path)
    before = tracemalloc.get_traced_memory()[0]
    again.warm()
    memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    again.close()
    row: dict[str, Any] = {"dataset": name, "copies": copies, "rows": rows, "questions": len(asked),
           "write_s": round(write_s, 2), "first_read_s": round(load_s, 3),
           "memory_mb": round(memory / 2**20, 1),
           "snapshot_write_s": round(snapshot_write_s, 3), "snapshot_mb": round(snapshot_mb, 1),
           "snapshot_read_s": round(snapshot_read_s, 3),
           "ours_p50_ms": pct(ours_ms, 0.5, 3), "ours_p99_ms": pct(ours_ms, 0.99, 3),
           "fts5_p50_ms": pct(fts5_ms, 0.5, 3), "fts5_p99_ms": pct(fts5_ms, 0.99, 3),
           "same_ranking": f"{agree}/{len(asked)}"}
    row["fts5_over_ours_p50"] = round(row["fts5_p50_ms"] / row["ours_p50_ms"], 2)
    return row


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    labels = [f"{r['dataset']}\nx{r['copies']} ({r['rows']:,} rows)" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(2.2 * len(rows) + 2, 4))
    ax.bar([i - 0.2 for i in x], [r["fts5_p50_ms"] for r in rows], 0.4, label="FTS5 bm25()")
    ax.bar([i + 0.2 for i in x], [r["ours_p50_ms"] for r in rows], 0.4, label="ours, in memory")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel(f"BM25 top-{K}, p50 ms")
    ax.set_title(f"Keyword search, one question at a time ({results['machine']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="scifact-test:1,scifact-test:5,cmrc2018-dev:1,"
                        "squad-v2-dev:1", help="DATASET:COPIES, comma-separated")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--out", default="keyword",
                        help="writes bench/results/OUT.json and OUT.png")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(),
                               "k": K, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-keyword-") as tmp:
        for spec in args.sets.split(","):
            name, _, copies = spec.partition(":")
            row = run(name, int(copies or 1), args.questions, Path(tmp))
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()
