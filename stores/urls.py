"""Store URLs: ``scheme://[host[:port]]/path?param=value``, parsed once for every backend."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from stores.errors import InvalidInput


class StoreURL:
    """A parsed store URL whose query parameters are consumed by the backend that opens it.

    Each backend pops the parameters it understands; ``finish()`` then rejects any left over,
    so a typo such as ``?nporbe=8`` is an error instead of a silently ignored setting.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.scheme = parts.scheme.lower()
        self.netloc = parts.netloc
        self.host = parts.hostname or ""
        try:
            self.port = parts.port
        except ValueError:
            raise InvalidInput(f"bad port in store URL {url!r}") from None
        self.path = unquote(parts.path)
        self._params = dict(parse_qsl(parts.query, keep_blank_values=True))

    def file_path(self) -> Path:
        """The filesystem path of a file-backed URL (``scheme:///abs`` or ``scheme://rel``)."""
        return Path(self.netloc + self.path) if self.netloc else Path(self.path)

    def str_param(self, name: str, default: str) -> str:
        return self._params.pop(name, default)

    def int_param(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.optional_int_param(name, minimum)
        return default if value is None else value

    def optional_int_param(self, name: str, minimum: int = 1) -> int | None:
        raw = self._params.pop(name, None)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(
                f"store URL parameter {name}={raw!r} must be an integer"
            ) from None
        if value < minimum:
            raise InvalidInput(f"store URL parameter {name} must be positive"
                               if minimum == 1 else f"store URL parameter {name} must be at "
                               f"least {minimum}")
        return value

    def float_param(self, name: str, default: float) -> float:
        raw = self._params.pop(name, None)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInput(f"store URL parameter {name}={raw!r} must be a number") from None
        if value <= 0:
            raise InvalidInput(f"store URL parameter {name} must be positive")
        return value

    def finish(self) -> None:
        """Reject parameters no backend consumed."""
        if self._params:
            raise InvalidInput(
                f"unknown {self.scheme} URL parameters: {', '.join(sorted(self._params))} "
                f"in {self.url!r}"
            )
