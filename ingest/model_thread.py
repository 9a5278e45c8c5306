"""One long-lived thread that makes every call into a local model.

PyTorch's CPU kernels run on an OpenMP team that belongs to the calling thread. When the
same model is called from many threads (the API's request pool, an ingestion worker, the
main thread), each gets its own team and the teams fight over the cores: on 2 cores a
MiniLM query took 38 ms instead of 16 ms on the main thread once a worker thread had also
used the model. So an embedder hands its work to one ``ModelThread``:

- queries waiting together are encoded as one batch (8 concurrent clients share one call);
- queries go before the document batches queued behind them, so a search answers within
  one document batch even while a large ingestion runs;
- an exception in the model reaches the caller, and the thread goes on;
- the thread ends after ``idle_exit_s`` without work, and the next call starts a new one.

The last point is for whatever else uses PyTorch in the process (the generator's scheduler
thread): the OpenMP runtime throttles every team's spin-wait to a hundred turns as long as
more of its threads exist than there are cores, idle or not, and a team lives as long as the
thread that made it. Measured on 2 cores: a MiniLM query took 16.1 ms (median of 8 turns of
40 queries) with no other team, 23.8 ms while another thread that had used PyTorch sat idle,
and 18.4 ms once that thread had ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    """Runs calls on one daemon thread, started on first use; queries first, batched."""

    def __init__(self, name: str, encode_queries: Callable[[list[str]], Any],
                 max_query_batch: int = 32, idle_exit_s: float = 2.0) -> None:
        self.name = name
        self.idle_exit_s = idle_exit_s
        self._encode_queries = encode_queries
        self._max_query_batch = max_query_batch
        self._queries: list[tuple[str, Future[Any]]] = []
        self._tasks: list[tuple[int, Callable[[], Any], Future[Any]]] = []
        self._ranks = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread and return its result (or raise its error)."""
        return self.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: Any, rank: int = 0) -> Future[T]:
        """Queue ``fn(*args)`` for the model thread; its future holds the result or error.

        Tasks run in order of ``rank``, then of submission: a caller with many tasks takes
        a rank from ``next_rank()`` and its tasks go before those of callers who came after
        it (two document embeddings at once: the older finishes first, not both at the
        end)."""
        future: Future[T] = Future()
        if threading.current_thread() is self._thread:
            _settle(future, lambda: fn(*args))  # a call from inside a call: run it in place
            return future
        with self._cond:
            self._start()
            self._tasks.append((rank, lambda: fn(*args), future))
            self._cond.notify()
        return future

    def next_rank(self) -> int:
        """A rank for ``submit``, after every rank given before."""
        with self._cond:
            self._ranks += 1
            return self._ranks

    def query(self, text: str) -> Any:
        """``encode_queries([text])[0]``, batched with the queries waiting at the same time."""
        if threading.current_thread() is self._thread:
            return self._encode_queries([text])[0]
        future: Future[Any] = Future()
        with self._cond:
            self._start()
            self._queries.append((text, future))
            self._cond.notify()
        return future.result()

    def close(self) -> None:
        """Finish the waiting work and stop the thread; a later call starts a new one."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._cond.notify()
        if thread is not threading.current_thread():
            thread.join()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queries or self._tasks or self._stopping):
                    if not self._cond.wait(self.idle_exit_s) and not (
                            self._queries or self._tasks or self._stopping):
                        self._thread = None  # idle: end, and with it this thread's threads
                        return
                if self._queries:
                    batch = self._queries[: self._max_query_batch]
                    del self._queries[: len(batch)]
                    task = None
                elif self._tasks:
                    first = min(range(len(self._tasks)), key=lambda i: self._tasks[i][0])
                    _, fn, future = self._tasks.pop(first)
                    batch, task = [], (fn, future)
                else:  # stopping, and nothing is waiting
                    self._thread, self._stopping = None, False
                    return
            if task is not None:
                _settle(task[1], task[0])
                continue
            try:
                vectors = self._encode_queries([text for text, _ in batch])
            except BaseException as exc:  # handed to every waiting caller
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for i, (_, future) in enumerate(batch):
                future.set_result(vectors[i])


def _settle(future: Future[Any], fn: Callable[[], Any]) -> None:
    try:
        result = fn()
    except BaseException as exc:  # re-raised in the caller's thread
        future.set_exception(exc)
    else:
        future.set_result(result)
