"""BM25 over token rows held in memory: the keyword index's scorer.

SQLite FTS5's ``bm25()`` is called on every row that holds any of the query's terms, and an
English question's terms (stop words dropped) are in about half the rows of a knowledge base:
SciFact's passages five times over (25,915 rows), 300 of its questions, 13,190 rows per
question at the median, and a search took 10 ms, about 0.4 ms per 1,000 rows. Restricting
the scored rows to those that can reach the top (the rare terms' rows, by each term's
largest possible share of a score) gave the same ids in 8.2 ms: FTS5 decodes every matching
row's positions either way. Here each term's rows and counts are two arrays, and a query is a
few array operations over its terms' rows.

The terms, the formula (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) / (n + 0.5)), at least
1e-6) and so the scores are FTS5's, to rounding, but for a query token that FTS5 splits
(``max_tokens``): FTS5 matched its pieces as a phrase, one after the other, where here
they are terms of their own.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np

K1, B = 1.2, 0.75


def _folds() -> dict[int, str]:
    folds = {ord("_"): " "}
    for code in range(0xC0, 0x250):
        parts = unicodedata.normalize("NFD", chr(code))
        if len(parts) > 1 and all(unicodedata.combining(c) for c in parts[1:]):
            folds[code] = parts[0]
    return folds


_FOLDS = _folds()


def terms_of(tokens: str) -> list[str]:
    """The terms of space-joined tokens, as FTS5's ``unicode61 remove_diacritics 2`` read
    them: split at ``_`` too (a SQuAD title, ``Southern_California``, holds ``california``),
    and Latin letters without their accents (``café`` meets ``cafe``)."""
    if tokens.isascii():
        return (tokens.replace("_", " ") if "_" in tokens else tokens).split()
    return tokens.translate(_FOLDS).split()


class Postings:
    """The rows of a keyword index as arrays: for each term, the slots of the rows holding it
    and how often each holds it; a row's slot also gives its id and length. Rows come and go
    by id (``add``, ``remove``); a removed row's slot stays, marked dead, until the owner
    builds a new ``Postings`` (``dead`` says how many)."""

    def __init__(self) -> None:
        self._slot_of: dict[int, int] = {}
        self._ids = np.zeros(1024, dtype=np.int64)
        self._lengths = np.zeros(1024, dtype=np.float64)
        self._alive = np.zeros(1024, dtype=bool)
        self._size = 0  # slots used
        self._vocabulary: dict[str, int] = {}  # term -> its place in _pieces
        self._pieces: list[list[tuple[np.ndarray, np.ndarray]]] = []  # slots, counts
        self.live = 0
        self.dead = 0
        self._tokens = 0  # tokens in the live rows

    def ids(self) -> set[int]:
        """The ids of the live rows."""
        return set(self._slot_of)

    def add(self, rows: Iterable[tuple[int, str]]) -> None:
        """Index ``(id, space-joined tokens)`` rows; an id already here is replaced."""
        rows = list(rows)
        self.remove([rid for rid, _ in rows if rid in self._slot_of])
        self._grow(self._size + len(rows))
        # One (term, slot, count) per term of each row, flat; sorted by term after. Per row
        # and per posting only C-level steps: 25,915 rows took 1.2 s with a dict of lists.
        words: list[str] = []
        slots: list[int] = []
        counts: list[int] = []
        for rid, tokens in rows:
            row = Counter(terms_of(tokens))
            length = sum(row.values())
            slot = self._size
            self._size += 1
            self._slot_of[rid] = slot
            self._ids[slot], self._lengths[slot], self._alive[slot] = rid, length, True
            self._tokens += length
            words.extend(row)
            counts.extend(row.values())
            slots.extend(repeat(slot, len(row)))
        self.live += len(rows)
        if not words:
            return
        vocabulary = self._vocabulary
        new = set(words).difference(vocabulary)
        vocabulary.update(zip(new, range(len(vocabulary), len(vocabulary) + len(new)),
                              strict=True))
        self._pieces.extend([] for _ in new)
        ids = np.fromiter(map(vocabulary.__getitem__, words), dtype=np.int64, count=len(words))
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        at = np.flatnonzero(np.diff(ids)) + 1
        slot_runs = np.split(np.array(slots, dtype=np.int32)[order], at)
        count_runs = np.split(np.array(counts, dtype=np.float32)[order], at)
        for term_id, run, tf in zip(ids[np.r_[0, at]].tolist(), slot_runs, count_runs,
                                    strict=True):
            self._pieces[term_id].append((run, tf))

    def remove(self, ids: Iterable[int]) -> None:
        for rid in ids:
            slot = self._slot_of.pop(rid, None)
            if slot is None:
                continue
            self._alive[slot] = False
            self._tokens -= int(self._lengths[slot])
            self.live -= 1
            self.dead += 1

    def top(self, terms: Sequence[str], k: int) -> list[tuple[int, float, int]]:
        """The ``k`` best rows for the distinct ``terms``: ``(id, score, how many of the
        terms the row holds)``, best first, equal scores by id."""
        if self.live == 0 or k < 1:
            return []
        n, avgdl = self.live, self._tokens / self.live
        slot_parts, weight_parts = [], []
        for word in terms:
            found = self._rows(word)
            if found is None:
                continue
            slots, tf = found
            if self.dead:
                keep = self._alive[slots]
                slots, tf = slots[keep], tf[keep]
            hits = len(slots)
            if not hits:
                continue
            idf = math.log((n - hits + 0.5) / (hits + 0.5))
            idf = idf if idf > 0.0 else 1e-6
            norm = K1 * (1.0 - B + B * self._lengths[slots] / avgdl)
            slot_parts.append(slots)
            weight_parts.append(idf * (tf * (K1 + 1.0)) / (tf + norm))
        if not slot_parts:
            return []
        slots = np.concatenate(slot_parts)
        scores = np.bincount(slots, weights=np.concatenate(weight_parts), minlength=self._size)
        held = np.bincount(slots, minlength=self._size)
        candidates = np.flatnonzero(held)
        best = scores[candidates]
        if len(candidates) > k:  # the k best, and any tied with the k-th
            kth = np.partition(best, len(best) - k)[len(best) - k]
            keep = best >= kth
            candidates, best = candidates[keep], best[keep]
        ids = self._ids[candidates]
        order = np.lexsort((ids, -best))[:k]
        return [(int(ids[i]), float(best[i]), int(held[candidates[i]])) for i in order]

    def _rows(self, word: str) -> tuple[np.ndarray, np.ndarray] | None:
        term_id = self._vocabulary.get(word)
        if term_id is None:
            return None
        pieces = self._pieces[term_id]
        if len(pieces) > 1:  # joined on first use after an add
            pieces[:] = [(np.concatenate([p[0] for p in pieces]),
                          np.concatenate([p[1] for p in pieces]))]
        return pieces[0]

    def _grow(self, size: int) -> None:
        capacity = len(self._ids)
        if size <= capacity:
            return
        while capacity < size:
            capacity *= 2
        for name in ("_ids", "_lengths", "_alive"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
