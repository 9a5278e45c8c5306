"""The peer pipelines, with their documented defaults, on one dataset: run in their own
virtualenv (``.venv/bench-peers``, see ``bench/retrieval.py``), print one JSON object.

- LangChain: RecursiveCharacterTextSplitter (800 characters, 100 overlap) +
  HuggingFaceEmbeddings + FAISS.from_documents; BM25Retriever (rank_bm25); hybrid = reciprocal
  rank fusion of the two (what EnsembleRetriever does, equal weights, c=60).
- Haystack: DocumentSplitter (150 words) + SentenceTransformersDocumentEmbedder (from
  sentence-transformers-haystack, where Haystack 3.4 moved it) +
  InMemoryDocumentStore; InMemoryBM25Retriever and InMemoryEmbeddingRetriever joined by
  DocumentJoiner(reciprocal_rank_fusion).

Both embed with the same all-MiniLM-L6-v2 folder as ours. Usage:
``python -m bench.peers DATASET_DIR QUESTIONS.json MODEL_DIR [--only langchain|haystack]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DEPTH = 30  # chunks retrieved per question, deduplicated into passages


def load(dataset: Path, question_file: Path) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    with (dataset / "passages.jsonl").open(encoding="utf-8") as f:
        passages = [json.loads(line) for line in f if line.strip()]
    questions = json.loads(question_file.read_text(encoding="utf-8"))
    return passages, questions


def text_of(p: dict[str, str]) -> str:
    """``rag.evaluation.passage_document``, restated: this runs in the peers' virtualenv,
    which cannot import our package."""
    title = (p.get("title") or "").strip()
    return f"{title}\n\n{p['text']}" if title else p["text"]


def dedupe(ids: list[str], k: int = 10) -> list[str]:
    return list(dict.fromkeys(ids))[:k]


def rrf(*rankings: list[str], c: int = 60) -> list[str]:
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, pid in enumerate(ranking):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (c + rank + 1)
    return sorted(scores, key=lambda pid: -scores[pid])


def langchain(passages: list[dict[str, str]], questions: list[dict[str, Any]], model: str
              ) -> dict[str, Any]:
    from langchain_community.retrievers import BM25Retriever
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    embeddings = HuggingFaceEmbeddings(model_name=model,
                                       encode_kwargs={"normalize_embeddings": True})
    embeddings.embed_query("warm up")
    start = time.perf_counter()
    docs = [Document(page_content=text_of(p), metadata={"pid": p["id"]}) for p in passages]
    chunks = RecursiveCharacterTextSplitter(chunk_size=800, chunk_overlap=100).split_documents(docs)
    store = FAISS.from_documents(chunks, embeddings)
    seconds = time.perf_counter() - start
    bm25_start = time.perf_counter()
    bm25 = BM25Retriever.from_documents(chunks, k=DEPTH)
    bm25_seconds = time.perf_counter() - bm25_start
    runs: dict[str, list[list[str]]] = {"dense": [], "keyword": [], "hybrid": []}
    for q in questions:
        dense = dedupe([d.metadata["pid"] for d in store.similarity_search(q["question"], k=DEPTH)],
                       DEPTH)
        keyword = dedupe([d.metadata["pid"] for d in bm25.invoke(q["question"])], DEPTH)
        runs["dense"].append(dense[:10])
        runs["keyword"].append(keyword[:10])
        runs["hybrid"].append(rrf(dense, keyword)[:10])
    return {"chunks": len(chunks), "ingest_seconds": round(seconds, 2),
            "bm25_index_seconds": round(bm25_seconds, 2), "rankings": runs}


def haystack(passages: list[dict[str, str]], questions: list[dict[str, Any]], model: str
             ) -> dict[str, Any]:
    from haystack import Document
    from haystack.components.joiners import DocumentJoiner
    from haystack.components.preprocessors import DocumentSplitter
    from haystack.components.retrievers.in_memory import (
        InMemoryBM25Retriever,
        InMemoryEmbeddingRetriever,
    )
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack_integrations.components.embedders.sentence_transformers import (
        SentenceTransformersDocumentEmbedder,
        SentenceTransformersTextEmbedder,
    )

    doc_embedder = SentenceTransformersDocumentEmbedder(model=model, progress_bar=False)
    text_embedder = SentenceTransformersTextEmbedder(model=model, progress_bar=False)
    doc_embedder.warm_up()
    text_embedder.warm_up()
    start = time.perf_counter()
    docs = [Document(content=text_of(p), meta={"pid": p["id"]}) for p in passages]
    splitter = DocumentSplitter(split_by="word", split_length=150)
    splitter.warm_up()
    chunks = splitter.run(documents=docs)["documents"]
    embedded = doc_embedder.run(documents=chunks)["documents"]
    store = InMemoryDocumentStore()
    store.write_documents(embedded)
    seconds = time.perf_counter() - start
    bm25 = InMemoryBM25Retriever(document_store=store, top_k=DEPTH)
    dense_r = InMemoryEmbeddingRetriever(document_store=store, top_k=DEPTH)
    joiner = DocumentJoiner(join_mode="reciprocal_rank_fusion", top_k=DEPTH)
    runs: dict[str, list[list[str]]] = {"dense": [], "keyword": [], "hybrid": []}
    for q in questions:
        vec = text_embedder.run(text=q["question"])["embedding"]
        d_docs = dense_r.run(query_embedding=vec)["documents"]
        k_docs = bm25.run(query=q["question"])["documents"]
        fused = joiner.run(documents=[d_docs, k_docs])["documents"]
        runs["dense"].append(dedupe([d.meta["pid"] for d in d_docs]))
        runs["keyword"].append(dedupe([d.meta["pid"] for d in k_docs]))
        runs["hybrid"].append(dedupe([d.meta["pid"] for d in fused]))
    return {"chunks": len(chunks), "ingest_seconds": round(seconds, 2), "rankings": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("questions", type=Path)
    parser.add_argument("model")
    parser.add_argument("--only", choices=["langchain", "haystack"])
    args = parser.parse_args()
    passages, questions = load(args.dataset, args.questions)
    out: dict[str, Any] = {}
    for name, fn in (("langchain", langchain), ("haystack", haystack)):
        if args.only in (None, name):
            out[name] = fn(passages, questions, args.model)
            print(f"{name}: {out[name]['chunks']} chunks in {out[name]['ingest_seconds']} s",
                  file=sys.stderr)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
