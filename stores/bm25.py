"""BM25 over token rows held in memory: the keyword index's scorer.

SQLite FTS5's ``bm25()`` is called on every row that holds any of the query's terms, and an
English question's terms (stop words dropped) are in about half the rows of a knowledge base:
SciFact's passages five times over (25,915 rows), 300 of its questions, 13,190 rows per
question at the median, and a search took 10 ms, about 0.4 ms per 1,000 rows. Restricting
the scored rows to those that can reach the top (the rare terms' rows, by each term's
largest possible share of a score) gave the same ids in 8.2 ms: FTS5 decodes every matching
row's positions either way. Here each term's rows and counts are arrays, and a query is a few
array operations over its terms' rows. ``python -m bench.keyword``, 300 questions, side by
side: p50 0.84-1.11 ms against FTS5's 10.5-10.6 ms over the 25,915 rows (three runs), 0.52
against 2.59 over SciFact's 5,183, 0.63 against 2.21 over CMRC's 848, 0.24 against 0.38
over SQuAD's 1,204; the same ranking for every question. Reading the 25,915 rows into memory
took 1.0-1.2 s and 25 MB (SciFact: 0.23 s, 7.7 MB); their snapshot (``arrays``), 19 MB,
is read back in 0.04 s.

The terms, the formula (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) / (n + 0.5)), at least
1e-6) and so the scores are FTS5's, to rounding, but for a query token that FTS5 splits
(``max_tokens``): FTS5 matched its pieces as a phrase, one after the other, where here
they are terms of their own.
"""

from __future__ import annotations

import re
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
_FOLDED = re.compile("[_\u00c0-\u024f]")  # what _FOLDS changes


def terms_of(tokens: str) -> list[str]:
    """The terms of space-joined tokens, as FTS5's ``unicode61 remove_diacritics 2`` read
    them: split at ``_`` too (a SQuAD title, ``Southern_California``, holds ``california``),
    and Latin letters without their accents (``café`` meets ``cafe``)."""
    if tokens.isascii():
        return (tokens.replace("_", " ") if "_" in tokens else tokens).split()
    if _FOLDED.search(tokens) is None:  # Chinese, say: translate() would take 30x longer
        return tokens.split()
    return tokens.translate(_FOLDS).split()


class _Segment:
    """Postings of a batch of rows, by term: ``terms`` sorted, the rows of ``terms[i]`` at
    ``slots[starts[i]:starts[i + 1]]``, each holding it ``counts[...]`` times."""

    def __init__(self, terms: np.ndarray, slots: np.ndarray, counts: np.ndarray) -> None:
        order = np.argsort(terms, kind="stable")
        terms = terms[order]
        self.slots, self.counts = slots[order], counts[order]
        first = np.flatnonzero(np.r_[True, terms[1:] != terms[:-1]])
        self.terms = terms[first]
        self.starts = np.r_[first, len(terms)]

    def rows(self, term_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        i = int(np.searchsorted(self.terms, term_id))
        if i == len(self.terms) or self.terms[i] != term_id:
            return None
        a, b = self.starts[i], self.starts[i + 1]
        return self.slots[a:b], self.counts[a:b]

    def postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (term, slot, count), flat."""
        return np.repeat(self.terms, np.diff(self.starts)), self.slots, self.counts


def _merged(segments: Sequence[_Segment]) -> _Segment:
    parts = [segment.postings() for segment in segments]
    return _Segment(*(np.concatenate([p[i] for p in parts]) for i in range(3)))


class Postings:
    """The rows of a keyword index as arrays: for each term, the slots of the rows holding it
    and how often each holds it; a row's slot also gives its id and length. Rows come and go
    by id (``add``, ``remove``); a removed row's slot stays, marked dead, until the owner
    builds a new ``Postings`` (``dead`` says how many).

    Each ``add`` makes a segment, sorted by term, merged with the ones before it as they grow.
    No Python object per term but its vocabulary entry: with an array pair per term, CMRC's
    848 passages (their jieba words and characters) took 23 MB."""

    def __init__(self) -> None:
        self._slot_of: dict[int, int] = {}
        self._ids = np.zeros(1024, dtype=np.int64)
        self._lengths = np.zeros(1024, dtype=np.float64)
        self._alive = np.zeros(1024, dtype=bool)
        self._size = 0  # slots used
        self._vocabulary: dict[str, int] = {}  # term -> its number in the segments
        self._segments: list[_Segment] = []
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
        # One (term, slot, count) per term of each row, flat, then sorted by term into a
        # segment: per row only C-level steps, and no Python list per term.
        words: list[str] = []
        slots: list[int] = []
        counts: list[int] = []
        for rid, tokens in rows:
            found = terms_of(tokens)
            row = Counter(found)
            length = len(found)
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
        self._segments.append(_Segment(
            np.fromiter(map(vocabulary.__getitem__, words), dtype=np.int32, count=len(words)),
            np.array(slots, dtype=np.int32), np.array(counts, dtype=np.float32)))
        # The newest segment joins the one before while it is at least half that one's
        # size: a few segments of falling sizes, each posting merged about log2(n) times,
        # however small the batches (an ingestion searched between its batches).
        segments = self._segments
        while len(segments) > 1 and 2 * len(segments[-1].slots) >= len(segments[-2].slots):
            segments[-2:] = [_merged(segments[-2:])]

    def merge(self) -> None:
        """Make the segments one (after reading many batches, say)."""
        if len(self._segments) > 1:
            self._segments = [_merged(self._segments)]

    @property
    def segments(self) -> int:
        return len(self._segments)

    def arrays(self) -> dict[str, np.ndarray]:
        """The live rows as plain arrays, for ``from_arrays`` (dead rows left out)."""
        self.merge()
        live = np.flatnonzero(self._alive[: self._size])
        renumbered = np.full(max(self._size, 1), -1, dtype=np.int64)
        renumbered[live] = np.arange(len(live))
        if self._segments:
            terms, slots, counts = self._segments[0].postings()
            keep = self._alive[slots]
            terms, slots, counts = terms[keep], renumbered[slots[keep]], counts[keep]
        else:
            terms = slots = np.zeros(0, dtype=np.int32)
            counts = np.zeros(0, dtype=np.float32)
        words = sorted(self._vocabulary, key=self._vocabulary.__getitem__)
        held, runs = np.unique(terms, return_counts=True)  # terms are sorted: runs of each
        return {"ids": self._ids[live], "lengths": self._lengths[live],
                "terms": held.astype(np.int32), "runs": runs.astype(np.int64),
                "slots": slots.astype(np.int32),
                "counts": counts.astype(np.float32),
                # terms hold no whitespace: they are split at it
                "vocabulary": np.frombuffer("\n".join(words).encode(), dtype=np.uint8)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Postings:
        postings = cls()
        ids = arrays["ids"].astype(np.int64)
        n = len(ids)
        postings._grow(n)
        postings._ids[:n], postings._lengths[:n], postings._alive[:n] = ids, arrays["lengths"], True
        postings._size = postings.live = n
        postings._slot_of = dict(zip(ids.tolist(), range(n), strict=True))
        postings._tokens = int(arrays["lengths"].sum())
        text = arrays["vocabulary"].tobytes().decode()
        words = text.split("\n") if text else []
        postings._vocabulary = dict(zip(words, range(len(words)), strict=True))
        if len(arrays["terms"]):
            terms = np.repeat(arrays["terms"], arrays["runs"])
            postings._segments = [_Segment(terms, arrays["slots"], arrays["counts"])]
        return postings

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
        found = [pieces for pieces in map(self._rows, terms) if pieces]
        if not found:
            return []
        # All terms' postings at once: a few array operations per query, not per term.
        slots = np.concatenate([rows for pieces in found for rows, _ in pieces])
        tf = np.concatenate([tf for pieces in found for _, tf in pieces]).astype(np.float64)
        term = np.repeat(np.arange(len(found)),
                         [sum(len(rows) for rows, _ in pieces) for pieces in found])
        if self.dead:
            keep = self._alive[slots]
            slots, tf, term = slots[keep], tf[keep], term[keep]
            if not len(slots):
                return []
        hits = np.bincount(term, minlength=len(found))  # rows holding each term
        idf = np.log((n - hits + 0.5) / (hits + 0.5))
        idf[idf <= 0.0] = 1e-6
        norm = K1 * (1.0 - B + B * self._lengths[slots] / avgdl)
        weights = idf[term] * (tf * (K1 + 1.0)) / (tf + norm)
        scores = np.bincount(slots, weights=weights, minlength=self._size)
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

    def _rows(self, word: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """The word's (slots, counts) in each segment that holds it."""
        term_id = self._vocabulary.get(word)
        if term_id is None:
            return []
        return [r for r in (segment.rows(term_id) for segment in self._segments)
                if r is not None]

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
