"""OpenAI-compatible: /v1/models (one model per knowledge base) and /v1/chat/completions.

The last user message is the question, earlier user/assistant turns are the history. Each
answer's citations travel in an extra ``citations`` field on the message (and on the final
stream chunk), so OpenAI clients keep them. ``max_tokens`` (or ``max_completion_tokens``),
``temperature``, ``top_p``, ``stop`` and ``seed`` reach the generator; ``n`` must be 1; the
system prompt is ours (it asks for cited answers from the passages), so system messages are
not passed on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CallerDep, RagDep
from api.routers.query import final_answer, observe
from api.schemas import plain
from rag.generation.aio import aiterate_in_thread
from rag.generation.base import Message
from rag.types import Answer
from stores.errors import InvalidInput, RagError

router = APIRouter(prefix="/v1", tags=["openai-compatible"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(None, description="up to 4 stop sequences")
    seed: int | None = None
    n: int = Field(1, ge=1, description="answers per request: only 1")
    stream_options: dict[str, Any] | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise InvalidInput("stop takes at most 4 sequences")
        return tuple(s for s in stops if s)


@router.get("/models")
def models(rag: RagDep, caller: CallerDep) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": kb.name, "object": "model", "owned_by": "rag-platform",
         "created": int(kb.created_at.timestamp()) if kb.created_at else 0}
        for kb in rag.list_kbs() if caller.allows(kb.name)]}


def _question(body: ChatRequest) -> tuple[str, list[Message]]:
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise InvalidInput("the last message must be the user's question")
    history = [Message(m.role, m.text()) for m in turns[:-1]]  # type: ignore[arg-type]
    return turns[-1].text(), history


def _usage(answer: Answer) -> dict[str, int]:
    u = answer.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens}


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, rag: RagDep, caller: CallerDep,
                           request: Request) -> dict[str, Any] | StreamingResponse:
    caller.check_kb(body.model)
    rag.get_kb(body.model, counts=False)  # 404 names the unknown model (knowledge base)
    question, history = _question(body)
    if body.n != 1:
        raise InvalidInput("n must be 1: each request gets one answer")
    params = rag.generation_params(body.max_completion_tokens or body.max_tokens,
                                   body.temperature, body.top_p, body.stops(), body.seed)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def run() -> Any:
        return rag.ask_stream(question, body.model, history=history, params=params)

    if not body.stream:
        answer = await final_answer(run, request)
        return {"id": rid, "object": "chat.completion", "created": created,
                "model": body.model,
                "choices": [{"index": 0, "finish_reason": answer.finish_reason, "message": {
                    "role": "assistant", "content": answer.text,
                    "citations": plain(answer.citations)}}],
                "usage": _usage(answer)}

    include_usage = bool((body.stream_options or {}).get("include_usage"))

    def chunk(delta: dict[str, Any], finish: str | None = None,
              **extra: Any) -> str:
        event = {"id": rid, "object": "chat.completion.chunk", "created": created,
                 "model": body.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for delta in aiterate_in_thread(run):
                if delta.answer is not None:
                    observe(request, delta.answer)
                    cites = plain(delta.answer.citations)
                    yield chunk({"citations": cites}, delta.answer.finish_reason,
                                citations=cites)
                    if include_usage:
                        yield (f"data: {json.dumps({'id': rid, 'object': 'chat.completion.chunk', 'created': created, 'model': body.model, 'choices': [], 'usage': _usage(delta.answer)})}\n\n")  # noqa: E501
                elif delta.text:
                    yield chunk({"content": delta.text})
        except RagError as exc:
            yield f"data: {json.dumps({'error': {'type': exc.type, 'message': exc.message}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
