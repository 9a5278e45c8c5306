"""/v1/knowledge-bases"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CallerDep, RagDep
from api.schemas import KBCreate, KBUpdate, plain

router = APIRouter(prefix="/v1/knowledge-bases", tags=["knowledge bases"])


@router.post("", status_code=201)
def create_kb(body: KBCreate, rag: RagDep, caller: CallerDep) -> dict[str, Any]:
    caller.check_kb(body.name)
    return plain(rag.create_kb(body.name, body.store_url, body.description))


@router.get("")
def list_kbs(rag: RagDep, caller: CallerDep) -> list[dict[str, Any]]:
    return [plain(kb) for kb in rag.list_kbs() if caller.allows(kb.name)]


@router.get("/{kb}")
def get_kb(kb: str, rag: RagDep, caller: CallerDep) -> dict[str, Any]:
    caller.check_kb(kb)
    return plain(rag.get_kb(kb))


@router.patch("/{kb}")
def update_kb(kb: str, body: KBUpdate, rag: RagDep, caller: CallerDep) -> dict[str, Any]:
    caller.check_kb(kb)
    return plain(rag.catalog.update_kb(kb, description=body.description))


@router.delete("/{kb}", status_code=204)
def delete_kb(kb: str, rag: RagDep, caller: CallerDep) -> None:
    caller.check_kb(kb)
    rag.delete_kb(kb)
