"""Parsing, chunking and keyword tokens of files, in this process or in a worker process.

On a GPU the embedding model is fast and its thread needs the GIL for every step of its
forward pass; the pure-Python work of parsing and chunking files in the ingesting thread,
and of making their keyword tokens, holds the GIL meanwhile and slows the model down. A
worker process does that work beside the model instead. Modelled on 2 cores with a model
that takes 1.0 us per token (``bench.simulated_gpu``), cmrc2018-dev's ingestion went from
0.79-0.85 of the bare encode to 1.06-1.07 when that work's results were taken from a cache
(a bound, not a measurement of these processes: on 2 cores they still need a core for it).

The worker is a plain child process (``python -m ingest.prepare``) that reads pickled
requests on stdin (the first: the model's tokenizer as JSON) and writes pickled replies on
stdout, one at a time in order. Unlike ``multiprocessing``'s spawn, it never imports the
caller's ``__main__``, so a script without a ``__main__`` guard works. It loads the loaders,
the chunker and the model's Rust tokenizer, nothing else.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ingest.chunking import Chunk, Chunker
from ingest.config import ChunkingConfig
from ingest.loaders import LoadedDocument, load_bytes
from stores import errors
from stores.errors import InvalidInput, RagError
from stores.keyword import KeywordIndex

_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Prepared:
    """A file parsed and chunked; ``tokens``: each chunk's keyword tokens, when made."""

    chunks: list[Chunk]
    metadata: dict[str, object]
    tokens: list[str] | None = None


@dataclass(frozen=True)
class Failure:
    """A file that cannot be ingested: the error's type name and message."""

    kind: str
    message: str

    def error(self) -> RagError:
        cls = getattr(errors, self.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, RagError)):
            cls = RagError
        exc = cls.__new__(cls)
        RagError.__init__(exc, self.message)
        return exc


def chunk_documents(chunker: Chunker, names: Sequence[str],
                    docs: Sequence[LoadedDocument | RagError],
                    offsets: Sequence[list[tuple[int, int]] | None]) -> list[Prepared | Failure]:
    """Chunk parsed documents (``offsets``: each one's token spans, or None)."""
    out: list[Prepared | Failure] = []
    for name, doc, spans in zip(names, docs, offsets, strict=True):
        if isinstance(doc, RagError):
            out.append(Failure(doc.type, doc.message))
            continue
        try:
            chunks = chunker.split(doc, spans)
            if not chunks:
                raise InvalidInput(f"{name}: no text to index")
        except RagError as exc:
            out.append(Failure(exc.type, exc.message))
            continue
        out.append(Prepared(chunks, dict(doc.metadata)))
    return out


def prepare_files(
        chunker: Chunker, files: Sequence[tuple[str, bytes]],
        offsets_of: Callable[[list[str]], list[list[tuple[int, int]] | None]],
) -> list[Prepared | Failure]:
    """Parse and chunk ``(name, bytes)`` files; ``offsets_of``: the token spans of the parsed
    texts, from one tokenizer call."""
    docs: list[LoadedDocument | RagError] = []
    for name, data in files:
        try:
            docs.append(load_bytes(name, data))
        except RagError as exc:
            docs.append(exc)
    spans = iter(offsets_of([d.text for d in docs if isinstance(d, LoadedDocument)]))
    offsets = [next(spans) if isinstance(d, LoadedDocument) else None for d in docs]
    return chunk_documents(chunker, [name for name, _ in files], docs, offsets)


class _Preparer:
    """The worker's side: the model's tokenizer, sent once, and a chunker per request with
    that request's chunking settings."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        self._rust = Tokenizer.from_str(tokenizer_json)
        self._rust.no_truncation()
        self._rust.no_padding()

    def run(self, chunking: dict[str, Any],
            files: list[tuple[str, bytes]]) -> list[Prepared | Failure]:
        rust = self._rust

        def count(text: str) -> int:
            return len(rust.encode(text, add_special_tokens=False))

        def spans(text: str) -> list[tuple[int, int]]:
            return list(rust.encode(text, add_special_tokens=False).offsets)

        def offsets_of(texts: list[str]) -> list[list[tuple[int, int]] | None]:
            return [list(e.offsets) for e in rust.encode_batch(texts, add_special_tokens=False)]

        chunker = Chunker(ChunkingConfig(**chunking), count, spans)
        out = prepare_files(chunker, files, offsets_of)
        return [Prepared(p.chunks, p.metadata,
                         KeywordIndex.tokens_of([c.indexed_text for c in p.chunks]))
                if isinstance(p, Prepared) else p for p in out]


def _read(stream: IO[bytes]) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _write(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def main() -> None:
    """The worker: requests on stdin, replies on stdout (anything printed goes to stderr)."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    try:
        preparer = _Preparer(_read(requests))  # the first message: the tokenizer
    except EOFError:
        return
    while True:
        try:
            request = _read(requests)
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", preparer.run(*request))
        except Exception as exc:  # reported to the caller, which raises it there
            reply = ("error", f"{type(exc).__name__}: {exc}")
        _write(replies, reply)


class PrepareWorker:
    """The caller's side: ``submit`` sends files to the worker process and returns a future
    of their outcomes; the process starts on first use and again after it died."""

    def __init__(self, tokenizer_json: str) -> None:
        self._tokenizer_json = tokenizer_json  # the model's, sent to each process it starts
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: deque[Future[list[Prepared | Failure]]] = deque()

    def submit(self, chunking: dict[str, Any],
               files: list[tuple[str, bytes]]) -> Future[list[Prepared | Failure]]:
        future: Future[list[Prepared | Failure]] = Future()
        # Writes are ordered by their own lock, never under the state lock: a write can wait
        # for the process to read, which can wait for the reply thread to take a reply.
        with self._write_lock:
            with self._lock:
                proc, started = self._start()
                pending = self._pending
            pending.append(future)
            try:
                assert proc.stdin is not None
                if started:
                    _write(proc.stdin, self._tokenizer_json)
                _write(proc.stdin, (chunking, files))
            except OSError as exc:  # the process died: the reply thread fails the others
                with self._lock:
                    if future in pending:
                        pending.remove(future)
                with contextlib.suppress(InvalidStateError):
                    future.set_exception(RagError(
                        f"the ingestion worker process failed: {exc}"))
        return future

    def _start(self) -> tuple[subprocess.Popen[bytes], bool]:
        """The running process, or a new one (True)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc, False
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        proc = subprocess.Popen([sys.executable, "-m", "ingest.prepare"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        self._proc, self._pending = proc, deque()
        threading.Thread(target=self._replies, args=(proc, self._pending), daemon=True,
                         name="rag-prepare-replies").start()
        return proc, True

    def _replies(self, proc: subprocess.Popen[bytes],
                 pending: deque[Future[list[Prepared | Failure]]]) -> None:
        """Hand each reply to the oldest request's future; when the process ends, fail the
        requests it did not answer."""
        assert proc.stdout is not None
        while True:
            try:
                kind, value = _read(proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self._lock:
                future = pending.popleft()
            if kind == "ok":
                future.set_result(value)
            else:
                future.set_exception(RagError(f"the ingestion worker process failed: {value}"))
        code = proc.wait()
        with self._lock:
            left = list(pending)
            pending.clear()
        for future in left:  # the same message as a failed write: which comes first is a race
            future.set_exception(RagError(f"the ingestion worker process failed: it ended "
                                          f"(exit code {code}) before replying"))

    def close(self) -> None:
        """End the process once it has answered what it was sent."""
        with self._write_lock, self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":  # run as ``python -m ingest.prepare``: reply with this module's
    from ingest.prepare import main as worker_main  # classes, not ``__main__``'s copies

    worker_main()
