"""Request bodies, and turning the engine's dataclasses into JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rag.types import to_plain

plain = to_plain


class KBCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    store_url: str | None = Field(None, description="default: RAG_STORE__URL")


class KBUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(None, ge=1, le=100)
    mode: Literal["dense", "keyword", "hybrid"] | None = None
    min_score: float | None = Field(None, ge=-1.0, le=1.0)
    filter: dict[str, Any] | None = None
    rerank: bool | None = Field(None, description="default: rerank when a rerank model is set")


class ChatTurn(BaseModel):
    role: Literal["user", "assistant"]
    content: str


class AskRequest(SearchRequest):
    history: list[ChatTurn] = Field(default_factory=list)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
