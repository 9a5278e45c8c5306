"""/v1/knowledge-bases/{kb}/search and /ask"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import CallerDep, RagDep
from api.schemas import AskRequest, SearchRequest, plain
from rag.engine import AnswerDelta
from rag.generation.aio import aiterate_in_thread
from rag.generation.base import Message
from rag.types import Answer, Citation, Passage
from stores.base import parse_filter
from stores.errors import RagError

router = APIRouter(prefix="/v1/knowledge-bases/{kb}", tags=["retrieval and answers"])


@router.post("/search", response_model=dict[str, Any])
def search(kb: str, body: SearchRequest, rag: RagDep, caller: CallerDep,
           request: Request) -> JSONResponse:
    caller.check_kb(kb)
    result = rag.search(body.query, kb, body.top_k, body.mode, body.min_score,
                        parse_filter(body.filter), rerank=body.rerank)
    request.app.state.metrics.retrieval.observe(result.timings.retrieval_ms / 1000)
    # Rendered here: FastAPI would check the dict against the declared type and encode it
    # on another trip through its thread pool.
    return JSONResponse(plain(result))


def sources(passages: list[Passage]) -> list[dict[str, Any]]:
    """The numbered passages an answer may cite, in the shape of a ``Citation``."""
    return [plain(Citation(i + 1, p.document_id, p.document_name, p.chunk_id, p.page, p.start,
                           p.end, p.text, p.score)) for i, p in enumerate(passages)]


def observe(request: Request, answer: Answer) -> None:
    m = request.app.state.metrics
    m.retrieval.observe(answer.timings.retrieval_ms / 1000)
    if answer.timings.time_to_first_token_ms is not None:
        m.ttft.observe(answer.timings.time_to_first_token_ms / 1000)
    if answer.timings.tokens_per_second:
        m.tokens_per_s.observe(answer.timings.tokens_per_second)


async def final_answer(run: Callable[[], Iterator[AnswerDelta]], request: Request) -> Answer:
    """Run an answer stream off the event loop and keep its cited ``Answer``."""
    answer: Answer | None = None
    async for delta in aiterate_in_thread(run):
        answer = delta.answer or answer
    assert answer is not None
    observe(request, answer)
    return answer


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post("/ask", response_model=None)
async def ask(kb: str, body: AskRequest, rag: RagDep, caller: CallerDep,
              request: Request) -> dict[str, Any] | StreamingResponse:
    """Answer with citations; ``stream: true`` sends server-sent events: ``citations`` (the
    numbered sources) first, then ``delta`` text, then ``done`` with the cited answer."""
    caller.check_kb(kb)
    rag.get_kb(kb, counts=False)  # 404 before the answer starts
    history = [Message(t.role, t.content) for t in body.history]
    flt = parse_filter(body.filter)

    def run() -> Any:
        return rag.ask_stream(body.query, kb, body.top_k, body.mode, body.min_score, flt,
                              history, rag.generation_params(body.max_tokens, body.temperature),
                              rerank=body.rerank)

    if not body.stream:
        return {"answer": plain(await final_answer(run, request))}

    async def events() -> AsyncIterator[str]:
        try:
            async for delta in aiterate_in_thread(run):
                assert isinstance(delta, AnswerDelta)
                if delta.passages is not None:
                    yield sse("citations", {"sources": sources(delta.passages)})
                elif delta.answer is not None:
                    observe(request, delta.answer)
                    yield sse("done", {"answer": plain(delta.answer)})
                elif delta.text:
                    yield sse("delta", {"text": delta.text})
        except RagError as exc:
            yield sse("error", {"error": {"type": exc.type, "message": exc.message}})

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
