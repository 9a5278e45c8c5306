"""A small OpenAI-compatible server over a real model, with fault injection, for tests.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (plain and ``stream: true`` over
server-sent events, usage in the last chunk when ``stream_options.include_usage``), answering
with our Transformers backend on the model folder it is given (the tiny Llama in tests).
``POST /_test/faults`` arranges failures for the next requests: ``statuses`` (answer these
HTTP statuses first, with ``Retry-After: 0``), ``delay_s`` (wait before the first byte),
``die_after_chunks`` (kill the whole process after sending that many chunks: a crash
mid-stream). ``GET /_test/stats`` counts the chat requests received.

Run: ``python -m tests.openai_server --port 8011 --model-dir /path/to/model``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rag.generation.base import GenerationParams, Message
from rag.generation.transformers_backend import TransformersGenerator
from rag.settings import GeneratorConfig


def create_app(model_dir: Path, served_name: str = "tiny-llama", max_batch: int = 8) -> FastAPI:
    gen = TransformersGenerator(GeneratorConfig(model=str(model_dir), max_batch=max_batch),
                                model_dir.parent)
    gen.warm_up()
    app = FastAPI(title="openai-compatible test server")
    faults: dict[str, Any] = {"statuses": [], "delay_s": 0.0, "die_after_chunks": None}
    stats = {"chat_requests": 0}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model",
                                            "owned_by": "tests",
                                            "max_model_len": gen.context_window}]}

    @app.post("/_test/faults")
    async def set_faults(request: Request) -> dict[str, Any]:
        faults.update(await request.json())
        return faults

    @app.get("/_test/stats")
    async def get_stats() -> dict[str, int]:
        return stats

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        stats["chat_requests"] += 1
        body = await request.json()
        if faults["statuses"]:
            status = int(faults["statuses"].pop(0))
            return JSONResponse({"error": {"message": f"injected {status}", "type": "test"}},
                                status, headers={"Retry-After": "0"})
        if faults["delay_s"]:
            await asyncio.sleep(float(faults["delay_s"]))
        if body.get("model") != served_name:
            return JSONResponse({"error": {"message": f"model {body.get('model')!r} not found",
                                           "type": "invalid_request_error"}}, 404)
        messages = [Message(m["role"], m["content"]) for m in body["messages"]]
        stop = body.get("stop") or ()
        params = GenerationParams(
            max_tokens=int(body.get("max_tokens") or 16),
            temperature=float(body.get("temperature") or 0.0),
            top_p=float(body.get("top_p") or 1.0),
            stop=tuple([stop] if isinstance(stop, str) else stop), seed=body.get("seed"),
            ignore_eos=bool(body.get("ignore_eos")))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.get("stream"):
            c = await gen.agenerate(messages, params)
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created,
                "model": served_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason}],
                "usage": {"prompt_tokens": c.prompt_tokens,
                          "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens}})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            sent = 0

            def chunk(delta: dict[str, Any], finish: str | None = None,
                      usage: dict[str, int] | None = None) -> str:
                event: dict[str, Any] = {
                    "id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": served_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                if usage is not None:
                    event["choices"], event["usage"] = [], usage
                return f"data: {json.dumps(event)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            async for d in gen.astream(messages, params):
                if d.completion is not None:
                    c = d.completion
                    yield chunk({}, c.finish_reason)
                    if include_usage:
                        yield chunk({}, usage={
                            "prompt_tokens": c.prompt_tokens,
                            "completion_tokens": c.completion_tokens,
                            "total_tokens": c.prompt_tokens + c.completion_tokens})
                    break
                yield chunk({"content": d.text})
                sent += 1
                if faults["die_after_chunks"] is not None and sent >= faults["die_after_chunks"]:
                    await asyncio.sleep(0.05)  # let the chunk leave, then crash for real
                    os._exit(1)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--served-name", default="tiny-llama")
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args()
    app = create_app(args.model_dir, args.served_name, args.max_batch)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
