"""The platform's one error tree.

It lives in ``stores`` because ``stores`` is the bottom layer (it imports nothing
of ours), so every layer above can raise and catch the same types. ``rag.errors``
re-exports it as the public name. Every error carries the HTTP status the API
answers with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class RagError(Exception):
    """Base of every error the platform raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def type(self) -> str:
        """The error's type name as sent in API error bodies."""
        return type(self).__name__


class InvalidInput(RagError):
    """The request or a file is malformed; the message says what to fix."""

    status_code = 422


class NotFound(RagError):
    status_code = 404


class Conflict(RagError):
    status_code = 409


class UnsupportedFileType(InvalidInput):
    status_code = 415


class PayloadTooLarge(InvalidInput):
    status_code = 413


class DimensionMismatch(InvalidInput):
    """A vector's dimension differs from the store's or knowledge base's."""


class MissingDependency(RagError):
    """An optional backend's package is not installed."""

    status_code = 501

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(
            f"{what} needs an optional dependency: pip install 'rag-platform[{extra}]'"
        )
        self.extra = extra


class StoreUnavailable(RagError):
    """The vector store cannot be reached or opened."""

    status_code = 503


class ModelUnavailable(RagError):
    """An embedding or generation model cannot be found or loaded."""

    status_code = 503


class GenerationError(RagError):
    status_code = 502


@contextlib.contextmanager
def sdk_errors(what: str, where: str) -> Iterator[None]:
    """Around a store SDK's calls: our typed errors pass, anything else the SDK raises
    (connection, server or protocol errors) becomes ``StoreUnavailable`` naming the store."""
    try:
        yield
    except (InvalidInput, StoreUnavailable):
        raise
    except Exception as exc:
        raise StoreUnavailable(f"cannot {what} {where}: {exc}") from exc
