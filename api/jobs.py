"""Background ingestion: uploads are saved under ``data/uploads/<job id>/`` and ingested by
worker threads, one job at a time per knowledge base. Jobs a crash left queued or running are
resumed on the next start (the pipeline is idempotent), or marked failed when their files are
gone; none stays stuck."""

from __future__ import annotations

import shutil
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ingest.catalog import JOB_FAILED, JOB_QUEUED, JOB_RUNNING
from ingest.types import FileResult
from rag.engine import RAG
from stores.errors import RagError

UPLOAD_SOURCE = "upload/"


class JobRunner:
    def __init__(self, rag: RAG, uploads: Path, workers: int) -> None:
        self.rag, self.uploads = rag, uploads
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rag-ingest")
        self._kb_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._pending = 0
        self._lock = threading.Lock()
        self.on_file: list[object] = []

    @property
    def queue_depth(self) -> int:
        return self._pending

    def folder(self, job_id: str) -> Path:
        return self.uploads / job_id

    def submit(self, job_id: str, kb: str) -> None:
        with self._lock:
            self._pending += 1
        self._pool.submit(self._run, job_id, kb)

    def _run(self, job_id: str, kb: str) -> None:
        folder = self.folder(job_id)
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file())
            sources = {p: UPLOAD_SOURCE + p.name for p in files}
            with self._kb_locks[kb]:  # one writer per knowledge base: same-file uploads queue
                self.rag.ingest(files, kb=kb, sources=sources, job_id=job_id,
                                on_file=self._observe, warm_keywords=True)
        except RagError as exc:
            self.rag.catalog.update_job(job_id, status=JOB_FAILED,
                                        error=("(job)", f"{exc.type}: {exc.message}"))
        except Exception as exc:  # a bug or an I/O failure: the job says so, never hangs
            self.rag.catalog.update_job(job_id, status=JOB_FAILED, error=("(job)", repr(exc)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._pending -= 1

    def _observe(self, result: FileResult) -> None:
        for hook in self.on_file:
            hook(result)  # type: ignore[operator]

    def recover(self) -> list[str]:
        """Resume or fail the ingestion jobs a previous process left unfinished."""
        kbs = {kb.id: kb.name for kb in self.rag.list_kbs()}
        touched = []
        for job in self.rag.catalog.jobs_in_status([JOB_QUEUED, JOB_RUNNING]):
            folder = self.folder(job.id)
            name = kbs.get(job.kb_id or -1)
            if job.kind == "upload" and name and folder.is_dir() and any(folder.iterdir()):
                self.submit(job.id, name)
            else:
                self.rag.catalog.update_job(
                    job.id, status=JOB_FAILED,
                    error=("(job)", "interrupted by a restart and its files are gone; "
                           "upload them again"))
            touched.append(job.id)
        return touched

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
