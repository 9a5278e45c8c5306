"""The FastAPI application: ``create_app()`` builds it, ``rag serve`` runs it with uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from api.deps import get_caller
from api.jobs import JobRunner
from api.metrics import Metrics
from api.routers import documents, jobs, knowledge_bases, openai_compat, ops, query
from ingest.pipeline import ADDED, FAILED, REPLACED, FileResult
from rag.engine import RAG
from rag.settings import Settings
from stores.errors import RagError

WEB = Path(__file__).resolve().parent.parent / "web"


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status)


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
        try:
            yield
        finally:
            runner.close()
            if rag is None:
                engine.close()

    app = FastAPI(title="rag-platform", version="0.1.0", lifespan=lifespan,
                  description="Knowledge bases, document ingestion, cited answers, and an "
                              "OpenAI-compatible endpoint.")
    app.state.settings, app.state.metrics = settings, metrics
    app.middleware("http")(metrics.middleware)

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
