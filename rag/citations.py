"""Citations: read the ``[n]`` markers of an answer, and attribute uncited statements.

An answer may only cite passages that were retrieved for it: markers naming a passage that
was not in the prompt are removed. Small models often omit markers; a sentence without one
is attributed to the passage sharing most of its words (at least half), and the marker is
added after it, so every citation still resolves to a retrieved passage and its span.
"""

from __future__ import annotations

import re

from rag.types import Citation, Passage
from stores.tokens import has_cjk, tokenize

_MARKER = re.compile(r"(\s*)[\[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]")
_SENTENCE = re.compile(r"[^。！？!?\n]+?(?:[。！？!?]+|(?<=[^\d])\.(?=\s|$)|\n|$)", re.S)
MIN_OVERLAP = 0.5


def _numbers(group: str) -> list[int]:
    return [int(x) for x in re.split(r"\s*[,，、]\s*", group.strip()) if x]


def clean_markers(text: str, n_passages: int) -> str:
    """Drop marker numbers outside 1..n_passages; write ``[1, 2]`` as ``[1][2]``."""

    def fix(m: re.Match[str]) -> str:
        ok = [n for n in _numbers(m.group(2)) if 1 <= n <= n_passages]
        return m.group(1) + "".join(f"[{n}]" for n in ok) if ok else ""

    return _MARKER.sub(fix, text)


def cited_numbers(text: str) -> list[int]:
    """Marker numbers in order of first appearance."""
    seen: dict[int, None] = {}
    for m in _MARKER.finditer(text):
        for n in _numbers(m.group(2)):
            seen.setdefault(n, None)
    return list(seen)


def attribute(text: str, passages: list[Passage]) -> str:
    """Add a marker after each uncited sentence that clearly comes from one passage."""
    if not passages:
        return text
    passage_tokens = [set(tokenize(p.text)) for p in passages]
    out: list[str] = []
    pos = 0
    for m in _SENTENCE.finditer(text):
        out.append(text[pos : m.start()])  # keep what lies between sentences (newlines)
        pos = m.end()
        sentence = m.group(0)
        if not sentence.strip() or _MARKER.search(sentence):
            out.append(sentence)
            continue
        words = set(tokenize(sentence))
        best_n, best = 0, 0.0
        if len(words) >= 2:
            for i, toks in enumerate(passage_tokens):
                overlap = len(words & toks) / len(words)
                if overlap > best:
                    best_n, best = i + 1, overlap
        if best_n and best >= MIN_OVERLAP:
            body = sentence.rstrip()
            tail = sentence[len(body):]
            punct = re.search(r"[。！？!?.]+$", body)
            cut = punct.start() if punct else len(body)
            space = "" if has_cjk(body[cut - 1 : cut]) else " "
            sentence = f"{body[:cut]}{space}[{best_n}]{body[cut:]}{tail}"
        out.append(sentence)
    out.append(text[pos:])
    return "".join(out)


def resolve(text: str, passages: list[Passage]) -> list[Citation]:
    """Citations for the markers in ``text``, numbered as the passages were in the prompt."""
    citations = []
    for n in cited_numbers(text):
        if 1 <= n <= len(passages):
            p = passages[n - 1]
            citations.append(
                Citation(n=n, document_id=p.document_id, document_name=p.document_name,
                         chunk_id=p.chunk_id, page=p.page, start=p.start, end=p.end,
                         text=p.text, score=p.score)
            )
    return citations
