"""Request dependencies: the engine, the job runner, and API-key authentication."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.jobs import JobRunner
from rag.engine import RAG
from rag.settings import Settings
from stores.errors import RagError


class Unauthorized(RagError):
    status_code = 401


class Forbidden(RagError):
    status_code = 403


@dataclass(frozen=True)
class Caller:
    """Who is calling: ``kbs`` is the set of knowledge bases the key opens (None: all)."""

    key: str | None
    kbs: frozenset[str] | None

    def check_kb(self, kb: str) -> None:
        if self.kbs is not None and kb not in self.kbs:
            raise Forbidden(f"this API key may not use knowledge base {kb!r}")

    def allows(self, kb: str) -> bool:
        return self.kbs is None or kb in self.kbs


async def get_rag(request: Request) -> RAG:
    rag: RAG = request.app.state.rag
    return rag


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_jobs(request: Request) -> JobRunner:
    jobs: JobRunner = request.app.state.jobs
    return jobs


async def get_caller(request: Request) -> Caller:
    scopes = request.app.state.settings.server.key_scopes()
    if not scopes:
        return Caller(None, None)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this server requires an API key: send 'Authorization: Bearer KEY'")
    for key, kbs in scopes.items():
        if hmac.compare_digest(key.encode(), token.strip().encode()):
            return Caller(key, frozenset(kbs) if kbs is not None else None)
    raise Unauthorized("unknown API key")


RagDep = Annotated[RAG, Depends(get_rag)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
CallerDep = Annotated[Caller, Depends(get_caller)]
