"""/healthz, /readyz, /metrics"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from api.deps import RagDep


def healthz() -> dict[str, str]:
    return {"status": "ok"}


def readyz(rag: RagDep) -> Any:
    """Catalog, every knowledge base's store, and the generator are reachable."""
    checks: dict[str, str] = {}
    try:
        kbs = rag.list_kbs()
        checks["catalog"] = "ok"
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "checks": {"catalog": str(exc)}}, 503)
    for kb in kbs:
        try:
            rag.indexes(kb).vectors.count()
            checks[f"store:{kb.name}"] = "ok"
        except Exception as exc:
            checks[f"store:{kb.name}"] = f"{type(exc).__name__}: {exc}"
    try:
        gen = rag.generator
        warm = getattr(gen, "warm_up", None)
        if warm is not None:
            warm()
        checks["generator"] = f"ok ({gen.model_id})"
    except Exception as exc:
        checks["generator"] = f"{type(exc).__name__}: {exc}"
    ok = all(v.startswith("ok") for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks},
                        200 if ok else 503)


def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    m.queue.set(request.app.state.jobs.queue_depth)
    return m.render()
