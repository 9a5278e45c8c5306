"""The model thread: one thread for every model call, queries first and batched."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from ingest.model_thread import ModelThread

pytestmark = pytest.mark.unit


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.threads: set[int] = set()

    def encode(self, texts: list[str]) -> list[str]:
        self.threads.add(threading.get_ident())
        self.events.append(tuple(texts))
        return [t.upper() for t in texts]

    def task(self, name: str) -> str:
        self.threads.add(threading.get_ident())
        self.events.append(name)
        return name


def _blocked(worker: ModelThread, rec: Recorder) -> tuple[threading.Event, Future[str]]:
    """Occupy the model thread until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return rec.task("held")

    pool = ThreadPoolExecutor(1)
    future = pool.submit(worker.call, hold)
    assert started.wait(10)
    return release, future


def _wait_queued(worker: ModelThread, queries: int = 0, tasks: int = 0) -> None:
    deadline = time.monotonic() + 10
    while len(worker._queries) < queries or len(worker._tasks) < tasks:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_every_call_runs_on_one_thread_and_returns_its_result() -> None:
    rec = Recorder()
    worker = ModelThread("test-model", rec.encode)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(worker.query, [f"q{i}" for i in range(20)]))
        tasks = list(pool.map(lambda i: worker.call(rec.task, f"t{i}"), range(20)))
    assert answers == [f"Q{i}" for i in range(20)]
    assert tasks == [f"t{i}" for i in range(20)]
    assert len(rec.threads) == 1 and threading.get_ident() not in rec.threads
    worker.close()


def test_queries_waiting_together_are_one_batch_and_go_before_queued_tasks() -> None:
    rec = Recorder()
    worker = ModelThread("test-model", rec.encode, max_query_batch=4)
    release, held = _blocked(worker, rec)
    pool = ThreadPoolExecutor(8)
    document = pool.submit(worker.call, rec.task, "documents")
    _wait_queued(worker, tasks=1)
    queries = [pool.submit(worker.query, f"q{i}") for i in range(6)]
    _wait_queued(worker, queries=6)
    release.set()
    assert [q.result(10) for q in queries] == [f"Q{i}" for i in range(6)]
    assert document.result(10) == "documents" and held.result(10) == "held"
    batches = [e for e in rec.events if isinstance(e, tuple)]
    assert sorted(len(b) for b in batches) == [2, 4]  # 6 queries, at most 4 per call
    assert rec.events.index("documents") == len(rec.events) - 1  # after both query batches
    worker.close()
    pool.shutdown()


def test_an_error_reaches_its_callers_and_the_thread_goes_on() -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> list[str]:
        calls.append(texts)
        if "bad" in texts:
            raise ValueError("the model failed")
        return texts

    worker = ModelThread("test-model", encode)
    with pytest.raises(ValueError, match="the model failed"):
        worker.query("bad")
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    assert worker.query("good") == "good"
    worker.close()


def test_close_finishes_the_work_and_a_later_call_starts_a_new_thread() -> None:
    rec = Recorder()
    worker = ModelThread("test-model", rec.encode)
    assert worker.query("a") == "A"
    first = worker._thread
    assert first is not None and first.is_alive()
    worker.close()
    assert not first.is_alive() and worker._thread is None
    assert worker.query("b") == "B"
    assert worker._thread is not None and worker._thread is not first
    worker.close()
    worker.close()  # twice is harmless


def test_a_call_from_the_model_thread_runs_in_place() -> None:
    rec = Recorder()
    worker = ModelThread("test-model", rec.encode)
    assert worker.call(lambda: worker.query("inner") + worker.call(rec.task, "x")) == "INNERx"
    worker.close()


def test_the_thread_ends_when_idle_and_the_next_call_starts_another() -> None:
    rec = Recorder()
    worker = ModelThread("test-model", rec.encode, idle_exit_s=0.1)
    assert worker.query("a") == "A"
    first = worker._thread
    assert first is not None
    first.join(10)
    assert not first.is_alive() and worker._thread is None
    assert worker.call(threading.current_thread) is not first, "a new thread serves calls"
    assert worker.call(rec.task, "b") == "b" and worker.query("c") == "C"
    worker.close()


def test_submit_queues_without_waiting_and_its_future_holds_the_result_or_error() -> None:
    rec = Recorder()
    worker = ModelThread("test-model", rec.encode)
    release, held = _blocked(worker, rec)
    first = worker.submit(rec.task, "first")
    failing = worker.submit(lambda: 1 / 0)
    assert not first.done() and not failing.done()  # queued behind the held call
    release.set()
    assert first.result(10) == "first" and held.result(10) == "held"
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    inner = worker.call(lambda: worker.submit(rec.task, "inner"))
    assert inner.done() and inner.result() == "inner"  # from the model thread: in place
    assert len(rec.threads) == 1
    worker.close()


def test_tasks_of_an_older_rank_go_first() -> None:
    """Two document embeddings at once: the one that took its rank first has its batches run
    first, whatever the order they were queued in, and tasks of one rank keep their order."""
    rec = Recorder()
    worker = ModelThread("test-model", rec.encode)
    older, newer = worker.next_rank(), worker.next_rank()
    assert newer > older
    release, held = _blocked(worker, rec)
    done = [worker.submit(rec.task, "new-1", rank=newer),
            worker.submit(rec.task, "old-1", rank=older),
            worker.submit(rec.task, "new-2", rank=newer),
            worker.submit(rec.task, "old-2", rank=older)]
    release.set()
    assert held.result(10) == "held"
    assert [f.result(10) for f in done] == ["new-1", "old-1", "new-2", "old-2"]
    assert rec.events == ["held", "old-1", "old-2", "new-1", "new-2"]
    worker.close()
