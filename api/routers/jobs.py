"""/v1/jobs"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, RagDep
from api.schemas import plain
from ingest.catalog import JOB_DONE, JOB_FAILED, Job
from rag.engine import RAG

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job(rag: RAG, job_id: str, caller: CallerDep) -> Job:
    job = rag.catalog.get_job(job_id)
    if caller.kbs is not None:
        names = {kb.id: kb.name for kb in rag.list_kbs()}
        caller.check_kb(names.get(job.kb_id or -1, ""))
    return job


@router.get("/{job_id}")
def get_job(job_id: str, rag: RagDep, caller: CallerDep) -> dict[str, Any]:
    return plain(_job(rag, job_id, caller))


@router.get("/{job_id}/events")
async def job_events(job_id: str, rag: RagDep, caller: CallerDep) -> StreamingResponse:
    """Server-sent events: a ``progress`` event each time the job's counters change, then
    ``done`` (or ``failed``) with the final state."""
    _job(rag, job_id, caller)

    async def events() -> AsyncIterator[str]:
        last: dict[str, Any] | None = None
        while True:
            job = await asyncio.to_thread(rag.catalog.get_job, job_id)
            state = plain(job)
            state.pop("updated_at", None)
            if state != last:
                last = state
                kind = {JOB_DONE: "done", JOB_FAILED: "failed"}.get(job.status, "progress")
                yield f"event: {kind}\ndata: {json.dumps(plain(job))}\n\n"
                if kind != "progress":
                    return
            await asyncio.sleep(0.25)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
