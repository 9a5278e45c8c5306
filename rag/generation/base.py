"""The generator seam: the ``Generator`` protocol and its values."""

from __future__ import annotations

import atexit
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always decode max_tokens


@dataclass(frozen=True)
class Completion:
    """A finished generation. Times are seconds; ``finish_reason`` is ``stop`` or ``length``."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float
    total_time: float

    @property
    def tokens_per_second(self) -> float:
        decode = self.total_time - self.time_to_first_token
        return self.completion_tokens / decode if decode > 0 else 0.0


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text; the last delta carries the finished ``completion``."""

    text: str
    completion: Completion | None = field(default=None)


@runtime_checkable
class Generator(Protocol):
    """A chat model."""

    @property
    def model_id(self) -> str: ...

    @property
    def context_window(self) -> int:
        """Prompt plus completion tokens the model accepts."""
        ...

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens these messages take, chat template included."""
        ...

    def generate(self, messages: list[Message], params: GenerationParams) -> Completion: ...

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        """Text as it is produced; the last delta carries the ``Completion``. Closing the
        iterator early cancels the request."""
        ...

    async def agenerate(self, messages: list[Message], params: GenerationParams) -> Completion:
        ...

    def astream(self, messages: list[Message], params: GenerationParams) -> AsyncIterator[Delta]:
        ...


def collect(deltas: Iterator[Delta]) -> Completion:
    """The completion a stream ends with."""
    final: Completion | None = None
    for delta in deltas:
        final = delta.completion or final
    if final is None:
        raise RuntimeError("a generation stream ended without its completion")
    return final


async def acollect(deltas: AsyncIterator[Delta]) -> Completion:
    final: Completion | None = None
    async for delta in deltas:
        final = delta.completion or final
    if final is None:
        raise RuntimeError("a generation stream ended without its completion")
    return final


class Closable(Protocol):
    def close(self, timeout: float | None = None) -> None: ...


def close_at_exit(generator: Closable, timeout: float = 60) -> None:
    """Close ``generator`` when the program ends, if it is alive then, waiting up to
    ``timeout`` seconds (a generation still running ends first, within reason). Exit hooks
    run last registered first: register after the imports whose own hooks need the
    generator closed before them (multiprocessing's waits for vLLM's engine process)."""
    atexit.register(_close_if_alive, weakref.ref(generator), timeout)


def _close_if_alive(ref: weakref.ref[Closable], timeout: float) -> None:
    generator = ref()
    if generator is not None:
        generator.close(timeout=timeout)
