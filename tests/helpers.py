"""Test doubles for the unit suite: a deterministic embedder and an extractive generator;
and a counter of the keyword rows read into memory.

The embedder hashes word and character-bigram features into a fixed-size vector, so texts
sharing words are close: enough to test our code paths without loading a model.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from rag.generation.base import Completion, Delta, GenerationParams, Message
from stores.bm25 import Postings

_TOKEN = re.compile(r"[\u4e00-\u9fff]|[^\W\u4e00-\u9fff]+|[^\w\s]")


class HashEmbedder:
    def __init__(self, dim: int = 64, model_id: str = "test/hash-embedder") -> None:
        self._dim = dim
        self._model_id = model_id
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        return self._model_id

    def _features(self, text: str) -> list[str]:
        words = [w.lower() for w in re.findall(r"\w+", text)]
        chars = [c for c in text if "\u4e00" <= c <= "\u9fff"]
        return words + ["".join(p) for p in itertools.pairwise(chars)]

    def _embed(self, text: str) -> np.ndarray:
        v = np.zeros(self._dim, dtype=np.float32)
        for f in self._features(text):
            h = int(hashlib.md5(f.encode()).hexdigest(), 16)
            v[h % self._dim] += 1.0 if (h >> 64) & 1 else -1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.stack([self._embed(t) for t in texts]) if texts else np.zeros((0, self._dim))

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed(text)

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))


class ExtractiveGenerator:
    """Answers with the first sentence of the first passage in the prompt, cited."""

    model_id = "test/extractive"
    context_window = 4096

    def count_tokens(self, messages: list[Message]) -> int:
        return sum(len(m.content.split()) for m in messages)

    def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        *_, last = self.stream(messages, params)
        assert last.completion is not None
        return last.completion

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        start = time.perf_counter()
        user = messages[-1].content
        m = re.search(r"\[1\] \([^)]*\) (.+?[.。])", user, re.S)
        text = (m.group(1).strip() + " [1]") if m else "I don't know."
        words = text.split(" ")
        finish = "stop"
        if len(words) > params.max_tokens:  # a word a token: cut off, as a model would be
            words, finish = words[: params.max_tokens], "length"
            text = " ".join(words)
        for i, w in enumerate(words):
            yield Delta(w if i == 0 else " " + w)
        total = time.perf_counter() - start
        yield Delta("", Completion(text, finish, self.count_tokens(messages), len(words),
                                   total / 2, total))


def keyword_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each ``Postings.add`` is given from now on: the keyword rows a search
    (or a warm-up) reads into memory."""
    counts: list[int] = []
    add = Postings.add

    def counted(self: Postings, rows: Iterable[tuple[int, str]]) -> None:
        rows = list(rows)
        counts.append(len(rows))
        add(self, rows)

    monkeypatch.setattr(Postings, "add", counted)
    return counts
