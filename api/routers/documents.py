"""/v1/knowledge-bases/{kb}/documents"""

from __future__ import annotations

import shutil
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile

from api import uploads
from api.deps import CallerDep, JobsDep, RagDep, SettingsDep
from api.schemas import plain
from ingest.catalog import JOB_FAILED, JOB_QUEUED
from stores.errors import InvalidInput, RagError

router = APIRouter(prefix="/v1/knowledge-bases/{kb}/documents", tags=["documents"])


@router.post("", status_code=202)
async def upload(kb: str, files: Annotated[list[UploadFile], File(description="one or more")],
                 rag: RagDep, jobs: JobsDep, settings: SettingsDep,
                 caller: CallerDep) -> dict[str, Any]:
    """Upload files; they are ingested in the background by the job this returns."""
    caller.check_kb(kb)
    base = rag.get_kb(kb)
    if not files:
        raise InvalidInput("no files in the request (multipart field 'files')")
    job = rag.catalog.create_job("upload", base.id, len(files), status=JOB_QUEUED)
    folder = jobs.folder(job.id)
    try:
        seen: set[str] = set()
        for f in files:
            name = uploads.safe_name(f.filename)
            if name in seen:
                raise InvalidInput(f"two files named {name!r} in one upload")
            seen.add(name)
            await uploads.save(f, folder, settings.ingest.max_file_bytes)
    except RagError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        rag.catalog.update_job(job.id, status=JOB_FAILED,
                               error=("(upload)", f"{exc.type}: {exc.message}"))
        raise
    jobs.submit(job.id, kb)
    return {"job": plain(rag.catalog.get_job(job.id))}


@router.get("")
def list_documents(kb: str, rag: RagDep, caller: CallerDep,
                   status: str | None = None, offset: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    caller.check_kb(kb)
    docs = rag.list_documents(kb, status, offset, limit)
    return {"documents": plain(docs), "offset": offset, "limit": limit}


@router.get("/{doc_id}")
def get_document(kb: str, doc_id: str, rag: RagDep, caller: CallerDep) -> dict[str, Any]:
    caller.check_kb(kb)
    return plain(rag.catalog.get_document(rag.get_kb(kb, counts=False).id, doc_id))


@router.delete("/{doc_id}")
def delete_document(kb: str, doc_id: str, rag: RagDep, caller: CallerDep) -> dict[str, Any]:
    caller.check_kb(kb)
    rag.catalog.get_document(rag.get_kb(kb, counts=False).id, doc_id)  # 404 for an unknown id
    return plain(rag.delete_document(doc_id, kb))


@router.get("/{doc_id}/chunks")
def list_chunks(kb: str, doc_id: str, rag: RagDep, caller: CallerDep,
                offset: Annotated[int, Query(ge=0)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    caller.check_kb(kb)
    rag.catalog.get_document(rag.get_kb(kb, counts=False).id, doc_id)
    return {"chunks": plain(rag.catalog.list_chunks(doc_id, offset, limit)),
            "offset": offset, "limit": limit}
