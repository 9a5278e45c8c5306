"""Vector stores behind one protocol, opened from a URL.

>>> store = open_store("faiss:///data/stores/kb1?index=hnsw&m=32")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from stores.base import (
    And,
    Eq,
    Filter,
    Hit,
    In,
    Ne,
    Or,
    Range,
    Record,
    VectorStore,
    matches,
    parse_filter,
)
from stores.errors import InvalidInput

__all__ = [
    "And",
    "Eq",
    "Filter",
    "Hit",
    "In",
    "Ne",
    "Or",
    "Range",
    "Record",
    "VectorStore",
    "matches",
    "open_store",
    "parse_filter",
    "supported_schemes",
    "url_path",
]


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.pop(name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"store URL parameter {name}={raw!r} must be an integer") from None
    if value <= 0:
        raise InvalidInput(f"store URL parameter {name} must be positive")
    return value


def url_path(url: str) -> Path:
    """The filesystem path of a file-backed store URL (``scheme:///abs`` or ``scheme://rel``)."""
    parts = urlsplit(url)
    return Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)


def _open_faiss(url: str) -> VectorStore:
    from stores.faiss_store import FaissParams, FaissStore

    params = dict(parse_qsl(urlsplit(url).query))
    fp = FaissParams(
        index=params.pop("index", "hnsw").lower(),
        m=_int_param(params, "m", 32),
        ef_construction=_int_param(params, "ef_construction", 200),
        ef_search=_int_param(params, "ef_search", 128),
        nlist=_int_param(params, "nlist", 1024),
        nprobe=_int_param(params, "nprobe", 16),
        device=params.pop("device", "cpu").lower(),
        dim=_int_param(params, "dim", 0) or None,
    )
    if params:
        raise InvalidInput(f"unknown faiss URL parameters: {', '.join(sorted(params))}")
    path = url_path(url)
    if not str(path) or str(path) == ".":
        raise InvalidInput(f"faiss URL needs a directory: {url!r}")
    return FaissStore(path, fp)


_REGISTRY: dict[str, Callable[[str], VectorStore]] = {
    "faiss": _open_faiss,
}


def supported_schemes() -> list[str]:
    return sorted(_REGISTRY)


def open_store(url: str) -> VectorStore:
    """Open (creating when needed) the vector store a URL names.

    Raises:
        InvalidInput: the URL's scheme or parameters are not understood.
        StoreUnavailable: the store cannot be reached or opened.
        MissingDependency: the backend's SDK is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    opener = _REGISTRY.get(scheme)
    if opener is None:
        raise InvalidInput(
            f"unknown vector store URL scheme {scheme!r} in {url!r}; "
            f"supported: {', '.join(supported_schemes())}"
        )
    return opener(url)
