"""Prometheus metrics of one app (its own registry, so several apps can live in a process)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rag_http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("rag_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=r)
        self.documents = Counter("rag_ingest_documents_total", "documents ingested",
                                 ["status"], registry=r)
        self.chunks = Counter("rag_ingest_chunks_total", "chunks written", registry=r)
        self.ingest_errors = Counter("rag_ingest_errors_total", "files that failed",
                                     registry=r)
        self.retrieval = Histogram("rag_retrieval_seconds", "retrieval latency (embedding the "
                                   "query included)", registry=r)
        self.ttft = Histogram("rag_generation_time_to_first_token_seconds",
                              "time to first token", registry=r)
        self.tokens_per_s = Histogram(
            "rag_generation_tokens_per_second", "decode speed",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r)
        self.queue = Gauge("rag_job_queue_depth", "ingestion jobs queued or running",
                           registry=r)

    async def middleware(self, request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.requests.labels(request.method, path, str(response.status_code)).inc()
        self.latency.labels(request.method, path).observe(time.perf_counter() - started)
        return response

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
