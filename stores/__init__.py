"""Vector stores behind one protocol, opened from a URL.

>>> store = open_store("faiss:///data/stores/kb1?index=hnsw&m=32")

Schemes: ``faiss://`` (in process), ``milvus://`` (Milvus Lite file or server),
``chroma://`` / ``chroma+http://`` (embedded or server), ``pinecone://`` (service or a
compatible host).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from urllib.parse import urlsplit

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
from stores.urls import StoreURL

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


def url_path(url: str) -> Path:
    """The filesystem path of a file-backed store URL (``scheme:///abs`` or ``scheme://rel``)."""
    return StoreURL(url).file_path()


# scheme -> module with an ``open_url(url)`` function; imported only when a URL names it, so a
# backend's SDK is loaded (or reported missing, with the extra to install) on first use.
_REGISTRY: dict[str, str] = {
    "faiss": "stores.faiss_store",
    "milvus": "stores.milvus_store",
    "milvus+http": "stores.milvus_store",
    "milvus+https": "stores.milvus_store",
    "chroma": "stores.chroma_store",
    "chroma+http": "stores.chroma_store",
    "chroma+https": "stores.chroma_store",
    "pinecone": "stores.pinecone_store",
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
    module = importlib.import_module(opener)
    store: VectorStore = module.open_url(url)
    return store
