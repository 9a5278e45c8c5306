"""The FastAPI application: ``create_app()`` builds it, ``rag serve`` runs it with uvicorn."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import get_caller
from api.jobs import JobRunner
from api.metrics import Metrics
from api.routers import documents, jobs, knowledge_bases, openai_compat, ops, query
from ingest.types import ADDED, FAILED, REPLACED, FileResult
from rag.engine import RAG
from rag.settings import Settings
from stores import tokens
from stores.errors import RagError

log = logging.getLogger(__name__)
WEB = Path(__file__).resolve().parent.parent / "web"
# The page loads only its own scripts and styles and talks only to this server: even if text
# from a document or the model got parsed as HTML somewhere, nothing in it could run.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
               "frame-ancestors 'none'")


class PageHeaders:
    """ASGI middleware: ``nosniff`` on every response, and the page's content policy on all
    but the API's and Swagger's (Swagger loads from a CDN)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = not scope["path"].startswith(("/v1/", "/docs", "/redoc"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if page:
                    headers.setdefault("Content-Security-Policy", PAGE_POLICY)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status)


def _warm_up(engine: RAG) -> None:
    """Load the embedding model, build what its queries go through (on CPU, a traced graph
    of the model), load the keyword tokenizer's dictionaries, and read each knowledge base's
    keyword index into memory, so that the first question waits for none of them."""
    warm_up = getattr(engine.embedder, "warm_up", None)
    if warm_up is not None:
        try:
            warm_up()
            getattr(engine.embedder, "prepare_queries", lambda: None)()
        except RagError as exc:
            log.warning("embedding model not loaded at start: %s", exc.message)
    tokens.warm_up()
    try:
        kbs = engine.list_kbs()
    except RagError as exc:
        log.warning("keyword indexes not read at start: %s", exc.message)
        return
    for kb in kbs:  # one at a time: a store that cannot be opened now skips its own only
        try:
            engine.indexes(kb).keywords.warm()
        except Exception as exc:  # reported again, to the caller, by the first search
            log.warning("keyword index of %r not read at start: %s", kb.name, exc)


KEYWORD_REFRESH_S = 2.0


def _refresh_keywords(engine: RAG, stop: threading.Event) -> None:
    """Every ``KEYWORD_REFRESH_S``, read what other processes wrote to the keyword indexes
    into memory, so that the first question after a batch ingestion does not (SciFact's
    5,183 passages: 224 ms)."""
    while not stop.wait(KEYWORD_REFRESH_S):
        try:
            engine.refresh_keywords()
        except Exception as exc:  # a knowledge base deleted meanwhile, say: the next turn
            log.debug("keyword indexes not refreshed: %s", exc)


def create_app(settings: Settings | None = None, rag: RAG | None = None) -> FastAPI:
    """The service over one engine. ``rag`` may be given (tests pass a configured engine)."""
    settings = settings or (rag.settings if rag is not None else Settings())
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = rag or RAG.from_settings(settings)
        runner = JobRunner(engine, engine.data_dir / "uploads", settings.server.ingest_workers)

        def count(result: FileResult) -> None:
            metrics.documents.labels(result.status).inc()
            if result.status in (ADDED, REPLACED):
                metrics.chunks.inc(result.chunks)
            elif result.status == FAILED:
                metrics.ingest_errors.inc()

        runner.on_file.append(count)
        app.state.rag, app.state.jobs = engine, runner
        runner.recover()
        # Load the embedding model now, off the event loop, so the first upload, knowledge
        # base or question does not wait for it; a failure here is reported by /readyz.
        threading.Thread(target=_warm_up, args=(engine,), name="rag-warm-up", daemon=True).start()
        stop = threading.Event()
        refresher = threading.Thread(target=_refresh_keywords, args=(engine, stop),
                                     name="rag-keywords-refresh", daemon=True)
        refresher.start()
        try:
            yield
        finally:
            stop.set()
            refresher.join()
            runner.close()
            if rag is None:
                engine.close()

    app = FastAPI(title="rag-platform", version="0.1.0", lifespan=lifespan,
                  description="Knowledge bases, document ingestion, cited answers, and an "
                              "OpenAI-compatible endpoint.")
    app.state.settings, app.state.metrics = settings, metrics
    app.add_middleware(PageHeaders)
    app.add_middleware(metrics.middleware)  # added last: it times the others too

    @app.exception_handler(RagError)
    async def rag_error(_: Request, exc: RagError) -> JSONResponse:
        return _error(exc.status_code, exc.type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return _error(422, "InvalidInput", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, "NotFound" if exc.status_code == 404 else "HTTPError",
                      str(exc.detail))

    secured = [Depends(get_caller)]
    for module in (knowledge_bases, documents, jobs, query, openai_compat):
        app.include_router(module.router, dependencies=secured)
    app.get("/healthz", tags=["operations"])(ops.healthz)
    app.get("/readyz", tags=["operations"], dependencies=secured)(ops.readyz)
    app.get("/metrics", tags=["operations"], dependencies=secured)(ops.metrics)
    if (WEB / "index.html").exists():
        app.mount("/", StaticFiles(directory=WEB, html=True), name="web")
    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory api.app:app_factory`` (settings from the environment)."""
    return create_app()
