"""Bridges between a backend's native side and the other one.

A backend implements whichever of ``stream`` / ``astream`` is native to it (Transformers is
synchronous, the OpenAI client and vLLM's engine are asynchronous) and gets its twin from here,
so the two never drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def aiterate_in_thread(factory: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator in a worker thread and yield its items asynchronously.

    When the consumer stops early (a client went away), the iterator is closed in its thread,
    so a generator's ``finally`` (releasing a model lock, cancelling a request) still runs.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
    stop = threading.Event()

    def pump() -> None:
        it = factory()
        try:
            for item in it:
                if stop.is_set():
                    break
                asyncio.run_coroutine_threadsafe(items.put(item), loop).result()
            asyncio.run_coroutine_threadsafe(items.put(_DONE), loop).result()
        except BaseException as exc:  # handed to the consumer
            with contextlib.suppress(RuntimeError):  # the loop may be gone
                asyncio.run_coroutine_threadsafe(items.put(exc), loop).result()
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = loop.run_in_executor(None, pump)
    try:
        while True:
            item = await items.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while not worker.done():  # let the producer finish its put, then see the stop flag
            with contextlib.suppress(asyncio.QueueEmpty):
                items.get_nowait()
            await asyncio.sleep(0.01)


class LoopThread:
    """One event loop on a daemon thread, for running asynchronous clients from sync code."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                                name="rag-generation-loop")
                self._thread.start()
                self._loop = loop
            return self._loop

    def close(self, timeout: float | None = None) -> None:
        """Stop the loop and its thread, waiting up to ``timeout`` seconds; a later call
        starts another. Tasks still on the loop are cancelled."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():
            loop.call_soon(loop.stop)
            return

        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    def iterate(self, factory: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate an async iterator from synchronous code. Closing the returned iterator
        early closes the async one (cancelling its request)."""
        loop = self.loop()
        out: queue.Queue[object] = queue.Queue(maxsize=64)
        cancelled = threading.Event()

        async def pump() -> None:
            agen = factory()
            try:
                async for item in agen:
                    while True:  # hand over without blocking the loop
                        if cancelled.is_set():
                            return
                        try:
                            out.put_nowait(item)
                            break
                        except queue.Full:
                            await asyncio.sleep(0.005)
                out.put(_DONE)
            except BaseException as exc:
                out.put(exc)
            finally:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()

        future = asyncio.run_coroutine_threadsafe(pump(), loop)
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            cancelled.set()
            if not future.done():
                future.cancel()

    def run(self, coro_factory: Callable[[], object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro_factory(), self.loop()).result()  # type: ignore[arg-type]
