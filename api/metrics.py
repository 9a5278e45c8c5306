"""Prometheus metrics of one app (its own registry, so several apps can live in a process)."""

from __future__ import annotations

import time

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """An ASGI middleware counting requests and timing them to their response's start,
        per route. Plain ASGI, not ``BaseHTTPMiddleware``, whose task group and body stream
        cost about 0.3 ms of each request on 2 cores."""

        async def observe(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started, responded = time.perf_counter(), False

            async def send_observed(message: Message) -> None:
                nonlocal responded
                if message["type"] == "http.response.start":
                    responded = True
                    self._observe(scope, str(message["status"]), started)
                await send(message)

            try:
                await app(scope, receive, send_observed)
            except BaseException:
                if not responded:  # the server answers it with a 500
                    self._observe(scope, "500", started)
                raise

        return observe

    def _observe(self, scope: Scope, status: str, started: float) -> None:
        path = getattr(scope.get("route"), "path", "unmatched")
        self.requests.labels(scope["method"], path, status).inc()
        self.latency.labels(scope["method"], path).observe(time.perf_counter() - started)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
