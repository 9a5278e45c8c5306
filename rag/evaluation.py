"""Retrieval and answer quality on a labelled set: ``rag eval``.

A dataset folder holds ``passages.jsonl`` (``{"id", "title", "text"}``) and
``questions.jsonl`` (``{"id", "question", "gold_passage_ids", "answers", "is_impossible"?}``),
the layout of ``../shared/data``. Each passage is ingested as one document named
``<id>.txt`` (title, blank line, text), so a retrieved chunk maps back to its passage.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.prompts import NO_ANSWER_EN, NO_ANSWER_ZH
from rag.retrieval import Mode
from stores.errors import InvalidInput, NotFound

DOC_SUFFIX = ".txt"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    gold: tuple[str, ...]
    answers: tuple[str, ...]
    impossible: bool = False


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    passages: list[dict[str, str]]
    questions: list[Question]

    def sample(self, limit: int | None, seed: int = 0, answerable: bool = True
               ) -> list[Question]:
        """Up to ``limit`` questions drawn with a fixed seed (answerable ones by default)."""
        if answerable:
            pool = [q for q in self.questions if not q.impossible and q.gold]
        else:
            pool = [q for q in self.questions if q.impossible]
        if limit is None or limit >= len(pool):
            return pool
        return random.Random(seed).sample(pool, limit)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError as exc:
        raise NotFound(f"{path} is missing: a dataset folder holds passages.jsonl and "
                       "questions.jsonl") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: line {exc.lineno} is not JSON: {exc.msg}") from exc


def load_dataset(path: Path) -> Dataset:
    path = Path(path)
    if not path.is_dir():
        raise NotFound(f"dataset folder {path} does not exist")
    passages = _read_jsonl(path / "passages.jsonl")
    questions = [
        Question(str(q["id"]), q["question"], tuple(str(g) for g in q.get("gold_passage_ids", [])),
                 tuple(q.get("answers", [])), bool(q.get("is_impossible", False)))
        for q in _read_jsonl(path / "questions.jsonl")
    ]
    return Dataset(path.name, path, passages, questions)


def passage_document(p: dict[str, str]) -> str:
    title = (p.get("title") or "").strip()
    return f"{title}\n\n{p['text']}" if title else p["text"]


def write_passages(dataset: Dataset, folder: Path) -> list[Path]:
    """One ``<id>.txt`` file per passage, the documents a knowledge base ingests."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in dataset.passages:
        target = folder / f"{p['id']}{DOC_SUFFIX}"
        target.write_text(passage_document(p), encoding="utf-8")
        paths.append(target)
    return paths


# ---------------------------------------------------------------- retrieval metrics

def unique_ids(ids: Iterable[str]) -> list[str]:
    """Passage ids in order of first appearance (several chunks may come from one)."""
    return list(dict.fromkeys(ids))


def recall_at(ranked: Sequence[str], gold: set[str], k: int) -> float:
    return len(gold & set(ranked[:k])) / len(gold) if gold else 0.0


def mrr_at(ranked: Sequence[str], gold: set[str], k: int = 10) -> float:
    for i, pid in enumerate(ranked[:k]):
        if pid in gold:
            return 1.0 / (i + 1)
    return 0.0


def ndcg_at(ranked: Sequence[str], gold: set[str], k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, pid in enumerate(ranked[:k]) if pid in gold)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(gold), k)))
    return dcg / ideal if ideal else 0.0


def retrieval_metrics(rankings: Sequence[Sequence[str]], golds: Sequence[set[str]],
                      ks: Sequence[int]) -> dict[str, float]:
    n = len(rankings) or 1
    out = {f"recall@{k}": sum(recall_at(r, g, k) for r, g in zip(rankings, golds, strict=True)) / n
           for k in ks}
    out["mrr@10"] = sum(mrr_at(r, g) for r, g in zip(rankings, golds, strict=True)) / n
    out["ndcg@10"] = sum(ndcg_at(r, g) for r, g in zip(rankings, golds, strict=True)) / n
    return {k: round(v, 4) for k, v in out.items()}


# ---------------------------------------------------------------- answer metrics (SQuAD style)

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_PUNCT = set(string.punctuation) | {"，", "。", "、", "；", "：", "？", "！", "“", "”", "‘", "’",
                                    "（", "）", "《", "》", "【", "】", "·", "—", "…"}


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Words for English, characters for Chinese (the CMRC convention)."""
    norm = normalize_answer(text)
    out: list[str] = []
    for word in norm.split():
        out.extend(list(word) if _CJK.search(word) else [word])
    return out


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    pred = answer_tokens(prediction)
    best = 0.0
    for a in answers:
        gold = answer_tokens(a)
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when a gold answer's tokens (words, or characters for Chinese) appear in the
    prediction in a row: "12" is not in "120 euros", "浙江省杭州市" is in "产于浙江省杭州市"."""
    pred = answer_tokens(prediction)
    for answer in answers:
        gold = answer_tokens(answer)
        if gold and any(pred[i : i + len(gold)] == gold for i in range(len(pred) - len(gold) + 1)):
            return 1.0
    return 0.0


_MARKERS = re.compile(r"\s*\[\d+\]")

# An answer that says it has none: the prompt asks the model to say it does not know when
# the passages do not answer (English and Chinese wording, as the two system prompts ask).
_DECLINES = re.compile(
    r"\b(?:i (?:do not|don't|cannot|can't|could not|couldn't) (?:know|find|answer|tell|say)"
    r"|(?:passages?|context|text)s? (?:do(?:es)? not|don't|doesn't) (?:contain|mention|say|"
    r"provide|answer|include|specify|state)"
    r"|not (?:mentioned|stated|provided|specified|given) in the (?:passages?|context|text)"
    r"|no (?:information|answer|mention) (?:about|on|of|in|to)"
    r"|there is no (?:information|answer|mention))\b"
    r"|不知道|无法回答|无法确定|没有(?:提到|提及|给出|相关信息|答案)|未(?:提到|提及|说明)",
    re.IGNORECASE)


def declines(answer: str) -> bool:
    """The answer says it does not know ("I don't know", "the passages do not mention",
    "不知道", "段落中没有提到"), or is the engine's own no-answer text."""
    text = unicodedata.normalize("NFKC", answer).replace("\u2019", "'")
    return bool(_DECLINES.search(text)) or text.strip() in (NO_ANSWER_EN, NO_ANSWER_ZH)


# ---------------------------------------------------------------- the evaluation

@dataclass
class EvalReport:
    dataset: str
    kb: str
    mode: str
    questions: int
    retrieval: dict[str, float]
    retrieval_ms_p50: float
    answers: dict[str, float] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    rerank: str | None = None  # the cross-encoder that reranked the candidates, if one did

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def ensure_kb(rag: Any, dataset: Dataset, kb: str) -> dict[str, Any]:
    """Create and fill ``kb`` with the dataset's passages, or reuse it when it holds them."""
    try:
        base = rag.get_kb(kb)
    except NotFound:
        base = rag.create_kb(kb, description=f"evaluation: {dataset.name}")
    if base.document_count >= len(dataset.passages):
        return {"reused": True, "documents": base.document_count}
    with tempfile.TemporaryDirectory(prefix="rag-eval-") as tmp:
        paths = write_passages(dataset, Path(tmp))
        start = time.perf_counter()
        report = rag.ingest(paths, kb=kb, sources={p: f"{dataset.name}/{p.name}" for p in paths})
        seconds = time.perf_counter() - start
    if report.failed:
        raise InvalidInput(f"{len(report.failed)} passages failed to ingest: "
                           f"{report.failed[0].name}: {report.failed[0].error}")
    return {"reused": False, "documents": len(paths), "chunks": report.chunks_written,
            "seconds": round(seconds, 2),
            "chunks_per_s": round(report.chunks_written / seconds, 2) if seconds else None}


def rank_passages(rag: Any, kb: str, question: str, mode: Mode | None, depth: int,
                  rerank: bool | None = None) -> tuple[list[str], float]:
    result = rag.search(question, kb, top_k=depth * 3, mode=mode, rerank=rerank)
    ids = unique_ids(p.document_name.removesuffix(DOC_SUFFIX) for p in result.passages)
    return ids[:depth], result.timings.retrieval_ms


def evaluate(rag: Any, dataset: Dataset, kb: str, mode: Mode | None = None,
             ks: Sequence[int] = (1, 5, 10), limit: int | None = 1000, seed: int = 0,
             answers: int = 0, on_progress: Callable[[int, int], None] | None = None,
             rerank: bool | None = None) -> EvalReport:
    """Retrieval metrics over ``limit`` sampled answerable questions; with ``answers`` > 0,
    answer exact match / F1 over that many of them and the abstention rate over as many
    unanswerable ones (when the set has any).

    ``rerank``: None reranks when a rerank model is configured (as a search does), False
    measures the first stage alone, True requires a model. The report names the model that
    reranked, so figures with and without it are not mistaken for each other."""
    rag.retriever.check_rerank(rerank)  # before any ingestion
    reranked = None if rerank is False else rag.settings.retrieval.rerank_model
    ingest = ensure_kb(rag, dataset, kb)
    questions = dataset.sample(limit, seed)
    if not questions:
        raise InvalidInput(f"{dataset.name} has no answerable questions with gold passages")
    depth = max(max(ks), 10)
    rankings, golds, times = [], [], []
    for i, q in enumerate(questions):
        ranked, ms = rank_passages(rag, kb, q.question, mode, depth, bool(reranked))
        rankings.append(ranked)
        golds.append(set(q.gold))
        times.append(ms)
        if on_progress is not None:
            on_progress(i + 1, len(questions))
    times.sort()
    report = EvalReport(dataset.name, kb, mode or rag.settings.retrieval.mode, len(questions),
                        retrieval_metrics(rankings, golds, ks), round(times[len(times) // 2], 2),
                        ingest=ingest, rerank=reranked)
    if answers > 0:
        report.answers = answer_metrics(rag, dataset, kb, mode, answers, seed, bool(reranked))
    return report


def answer_metrics(rag: Any, dataset: Dataset, kb: str, mode: Mode | None, n: int,
                   seed: int, rerank: bool | None = None) -> dict[str, float]:
    answerable = [q for q in dataset.sample(n, seed) if q.answers]
    em = f1 = hit = 0.0
    for q in answerable:
        text = _MARKERS.sub("", rag.ask(q.question, kb, mode=mode, rerank=rerank).text)
        em += exact_match(text, q.answers)
        f1 += token_f1(text, q.answers)
        hit += contains_answer(text, q.answers)
    out = {"answered": len(answerable),
           "exact_match": round(em / max(len(answerable), 1), 4),
           "f1": round(f1 / max(len(answerable), 1), 4),
           "contains_answer": round(hit / max(len(answerable), 1), 4)}
    impossible = dataset.sample(n, seed, answerable=False)
    if impossible:
        abstained = 0
        for q in impossible:  # the engine found nothing, or the model said it does not know
            answer = rag.ask(q.question, kb, mode=mode, rerank=rerank)
            abstained += answer.abstained or declines(answer.text)
        out["unanswerable"] = len(impossible)
        out["abstention_rate"] = round(abstained / len(impossible), 4)
    return out
