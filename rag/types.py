"""Typed results of the engine, shared by the CLI, the API, the SDK and the page."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from pathlib import PurePath
from typing import Any


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk, resolved through the catalog. ``score`` is higher-is-better."""

    chunk_id: str
    document_id: str
    document_name: str
    text: str
    start: int
    end: int
    page: int | None
    score: float
    dense_score: float | None = None
    keyword_score: float | None = None
    rerank_score: float | None = None


@dataclass(frozen=True)
class Citation:
    """A passage an answer cites as ``[n]``, with the span of the document it comes from."""

    n: int
    document_id: str
    document_name: str
    chunk_id: str
    page: int | None
    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent per stage; ``tokens_per_second`` of the decode phase."""

    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    time_to_first_token_ms: float | None = None
    tokens_per_second: float | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class SearchResult:
    query: str
    passages: list[Passage]
    timings: Timings


@dataclass(frozen=True)
class Answer:
    """An answer with the citations it makes. ``abstained``: nothing relevant was found.
    ``finish_reason``: ``stop`` when the model ended the answer, ``length`` when it was cut
    off at ``max_tokens``."""

    question: str
    text: str
    citations: list[Citation]
    passages: list[Passage]
    timings: Timings
    usage: Usage = field(default_factory=Usage)
    abstained: bool = False
    model: str = ""
    finish_reason: str = "stop"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_plain(value: Any) -> Any:
    """Dataclasses, lists, dicts, datetimes and paths as JSON-ready values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_plain(v) for k, v in asdict(value).items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    return value
