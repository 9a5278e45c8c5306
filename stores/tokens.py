"""Search tokens for the keyword index, Chinese-aware: jieba's search-mode words and each
character for Chinese (through jieba-rs), lower-cased words for other scripts, stop words
dropped, Latin-script words reduced to their English Snowball stem. ``TOKENIZER_VERSION``
names this tokenization; a keyword file written by an earlier one is converted when opened.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[\w]+", re.UNICODE)
_STOP_TEXT = """
a an and are as at be by for from has have how in is it its of on or that the this to
was were what when where which who why will with do does did not no can you your we our i
的 了 是 在 和 与 或 也 就 都 而 及 着 吗 呢 吧 啊 什么 怎么 如何 哪 哪些 为什么 是否
一个 这个 那个 这 那 有 被 把 对 没有 怎么办 怎么样 应该 可以 多少 需要 能 会 要 请问 哪里 几 个
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
_LATIN_WORD = re.compile(r"[a-zà-ÿ]+")
# 0: lower-cased words; 1: words stemmed (the same tokens, each through ``stem``)
TOKENIZER_VERSION = 1


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


@lru_cache(maxsize=1)
def _segmenter() -> Callable[[str, bool], list[str]]:
    """jieba's search-mode segmentation (its dictionary and HMM) in jieba-rs, the Rust port:
    CMRC 2018 dev's 848 passages take 0.08 s against the Python jieba's 1.13 s, whose CPU
    competed with the embedding model's threads during an ingest (ingestion against the bare
    encode: 0.92 -> 0.93-0.97 over four runs). Loaded on first use (0.1 s; the Python jieba
    took 0.65 s). The two agree on Chinese words; on Latin letters and digits inside Chinese
    text jieba-rs keeps whole runs (``2.4km``, not ``2.4`` + ``km``), which changes 0.07% of
    CMRC's tokens: entries indexed with the Python jieba keep those few until their document
    is ingested again."""
    import rjieba

    return rjieba.cut_for_search


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    """Snowball's English stemmer in C (PyStemmer): the stems of the pure-Python
    snowballstemmer, 19x faster (39,270 words of the three benchmark sets: the same stem for
    every one, 0.04 s against 0.78 s). A first ingestion stems each distinct word once:
    squad-v2-dev's 14,081 took about 0.3 s in Python, time that shows on a GPU, where the
    model no longer hides the rest of ingestion."""
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """A lower-cased Latin-script word's English Snowball stem (``reduces``, ``reduced`` and
    ``reducing`` all give ``reduc``); other words as they are. SQuAD 2.0 dev, 1,000 questions
    held out from the benchmark's sample: BM25 recall@5 0.922 -> 0.947."""
    if not _LATIN_WORD.fullmatch(word):
        return word
    return str(_stemmer().stemWord(word))


def warm_up() -> None:
    """Load the Chinese segmenter's dictionary and the stemmer now (80 ms on 2 cores), not
    at the first text that needs them: a server's first Chinese question, or, in an
    ingestion, the first Chinese text, where the load holds the GIL beside the model (in
    ``bench.simulated_gpu``'s first turn on SQuAD, 0.95 s without this, 0.88 s with)."""
    _segmenter()
    _stemmer()


class _Terms(dict[str, str]):
    """A word's search term, by word: its stem, or "" for a stop word or a lone ASCII
    character; filled as words are met, up to ``limit`` of them (a long-running server meets
    ever more). Looked up by ``map``, with no Python call per word once a word is known:
    CMRC 2018 dev's 848 passages took 0.24 s to tokenize through a call per word, 0.17 s
    this way, work that competes with the model during an ingest."""

    limit = 200_000

    def __missing__(self, word: str) -> str:
        term = "" if word in STOP_WORDS or (len(word) == 1 and word.isascii()) else stem(word)
        if len(self) < self.limit:
            self[word] = term
        return term


_TERMS = _Terms()
# What a Chinese character drops: a stop word, or one that is no word character (the 40
# unassigned code points of ``_CJK``'s ranges, which the word pattern never matched).
_DROPPED_CHARS = STOP_WORDS | {
    chr(c) for lo, hi in ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
    for c in range(lo, hi + 1) if not chr(c).isalnum()}


def tokenize(text: str) -> list[str]:
    """Search tokens: jieba words and characters for Chinese, lower-cased words elsewhere,
    no stop words, Latin-script words stemmed."""
    if not has_cjk(text):
        return [t for t in map(_TERMS.__getitem__, _WORD.findall(text.lower())) if t]
    # jieba's words, plus each Chinese character: a query segmented differently from the
    # passage (休完 / 未休 完) still meets it, and BM25's IDF keeps common ones cheap. One
    # regex pass over the words joined by spaces, not one per word (no word runs across a
    # space); the characters need none: each is a word, with no case and no stem.
    words = _WORD.findall(" ".join(_segmenter()(text, True)).lower())
    terms = [t for t in map(_TERMS.__getitem__, words) if t]
    terms.extend([c for c in _CJK.findall(text) if c not in _DROPPED_CHARS])
    return terms
