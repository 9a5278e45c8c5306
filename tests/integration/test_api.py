"""The HTTP service in process (FastAPI TestClient over the real engine with the hash embedder
and the extractive generator): knowledge bases, uploads and their edge cases, jobs, search,
answers with streaming, the OpenAI-compatible routes, auth, metrics, restart recovery."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import api.app as app_module
from api import create_app
from ingest.catalog import JOB_QUEUED, JOB_RUNNING
from rag.engine import RAG
from stores import tokens
from stores.keyword import KeywordIndex
from tests.conftest import SAMPLES, make_settings
from tests.helpers import ExtractiveGenerator, HashEmbedder, keyword_reads
from tests.servers import free_port

QUESTION = "How much is an adult ticket at the observatory?"


def _engine(tmp_path: Path, **overrides: Any) -> RAG:
    return RAG(make_settings(tmp_path, **overrides), generator=ExtractiveGenerator(),
               embedder=HashEmbedder())


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    rag = _engine(tmp_path, ingest={"max_file_bytes": 200_000})
    with TestClient(create_app(rag=rag)) as c:
        yield c
    rag.close()


def _files(*names: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (n, (SAMPLES / n).read_bytes(), "application/octet-stream"))
            for n in names]


def _wait(c: TestClient, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        job: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def _upload(c: TestClient, kb: str, files: list[Any]) -> dict[str, Any]:
    r = c.post(f"/v1/knowledge-bases/{kb}/documents", files=files)
    assert r.status_code == 202, r.text
    return _wait(c, r.json()["job"]["id"])


def test_knowledge_base_routes(client: TestClient) -> None:
    r = client.post("/v1/knowledge-bases", json={"name": "hb", "description": "handbook"})
    assert r.status_code == 201 and r.json()["name"] == "hb"
    assert client.post("/v1/knowledge-bases", json={"name": "hb"}).status_code == 409
    r = client.post("/v1/knowledge-bases", json={"name": "../x"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "InvalidInput"
    assert [kb["name"] for kb in client.get("/v1/knowledge-bases").json()] == ["hb"]
    r = client.patch("/v1/knowledge-bases/hb", json={"description": "new"})
    assert r.json()["description"] == "new"
    assert client.get("/v1/knowledge-bases/nope").json()["error"]["type"] == "NotFound"
    assert client.delete("/v1/knowledge-bases/hb").status_code == 204
    assert client.get("/v1/knowledge-bases/hb").status_code == 404


def test_upload_ingest_search_ask_delete(client: TestClient) -> None:
    client.post("/v1/knowledge-bases", json={"name": "kb"})
    job = _upload(client, "kb", _files("observatory-guide.md", "tea-brewing.pdf"))
    assert job["status"] == "done" and job["files_done"] == 2 and job["chunks_written"] > 0
    docs = client.get("/v1/knowledge-bases/kb/documents").json()["documents"]
    assert {d["name"] for d in docs} == {"observatory-guide.md", "tea-brewing.pdf"}
    assert all(d["status"] == "indexed" for d in docs)
    obs = next(d for d in docs if d["name"] == "observatory-guide.md")
    chunks = client.get(f"/v1/knowledge-bases/kb/documents/{obs['id']}/chunks").json()
    assert chunks["chunks"][0]["text"].startswith("# Harbor Point")
    hits = client.post("/v1/knowledge-bases/kb/search", json={"query": QUESTION}).json()
    assert hits["passages"][0]["document_name"] == "observatory-guide.md"
    answer = client.post("/v1/knowledge-bases/kb/ask", json={"query": QUESTION}).json()
    assert answer["answer"]["citations"][0]["document_name"] == "observatory-guide.md"
    r = client.delete(f"/v1/knowledge-bases/kb/documents/{obs['id']}")
    assert r.status_code == 200
    assert client.get(f"/v1/knowledge-bases/kb/documents/{obs['id']}").status_code == 404
    hits = client.post("/v1/knowledge-bases/kb/search", json={"query": QUESTION}).json()
    assert all(p["document_name"] != "observatory-guide.md" for p in hits["passages"])


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events


def test_ask_streams_citations_then_deltas_then_done(client: TestClient) -> None:
    client.post("/v1/knowledge-bases", json={"name": "kb"})
    _upload(client, "kb", _files("observatory-guide.md"))
    with client.stream("POST", "/v1/knowledge-bases/kb/ask",
                       json={"query": QUESTION, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[0] == "citations" and kinds[-1] == "done" and "delta" in kinds
    assert set(kinds[1:-1]) == {"delta"}
    streamed = "".join(d["text"] for k, d in events if k == "delta")
    done = events[-1][1]["answer"]
    assert streamed.strip() and done["citations"][0]["n"] == 1
    assert events[0][1]["sources"][0]["document_name"] == "observatory-guide.md"


def test_upload_edge_cases(client: TestClient, tmp_path: Path) -> None:
    client.post("/v1/knowledge-bases", json={"name": "kb"})
    url = "/v1/knowledge-bases/kb/documents"
    big = [("files", ("big.txt", b"x" * 300_000, "text/plain"))]
    r = client.post(url, files=big)
    assert r.status_code == 413 and "big.txt" in r.json()["error"]["message"]
    r = client.post(url, files=[("files", ("tool.exe", b"MZ\x90\x00", "application/x"))])
    assert r.status_code == 415
    r = client.post(url, files=[("files", ("fake.pdf", b"\x7fELF binary", "application/pdf"))])
    assert r.status_code == 415 and "not a PDF" in r.json()["error"]["message"]
    r = client.post(url, files=[("files", ("empty.md", b"", "text/markdown"))])
    assert r.status_code == 422 and "empty" in r.json()["error"]["message"]
    job = _upload(client, "kb", [("files", ("../../etc/evil.md", b"# Evil\n\nPath text.",
                                             "text/markdown"))])
    assert job["files_done"] == 1
    names = [d["name"] for d in client.get(url).json()["documents"]]
    assert names == ["evil.md"], "the name was cut to its last part"
    assert not (tmp_path / "etc").exists()
    again = _upload(client, "kb", [("files", ("evil.md", b"# Evil\n\nPath text.", "text/md"))])
    assert again["files_skipped"] == 1 and again["chunks_written"] == 0, "no second copy"
    assert len(client.get(url).json()["documents"]) == 1


def test_concurrent_uploads_of_the_same_file(client: TestClient) -> None:
    client.post("/v1/knowledge-bases", json={"name": "kb"})
    url = "/v1/knowledge-bases/kb/documents"
    jobs: list[str] = []

    def post() -> None:
        r = client.post(url, files=_files("returns-policy.html"))
        jobs.append(r.json()["job"]["id"])

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = [_wait(client, j) for j in jobs]
    assert all(j["status"] == "done" for j in finished)
    assert sum(j["files_done"] for j in finished) == 1, "written once, then unchanged"
    docs = client.get(url).json()["documents"]
    assert len(docs) == 1
    rag: RAG = client.app.state.rag  # type: ignore[attr-defined]
    kb = rag.get_kb("kb")
    idx = rag.indexes(kb)
    assert idx.vectors.count() == rag.catalog.chunk_total(kb.id) == idx.keywords.count()


def test_job_events_stream_progress(client: TestClient) -> None:
    client.post("/v1/knowledge-bases", json={"name": "kb"})
    r = client.post("/v1/knowledge-bases/kb/documents",
                    files=_files("observatory-guide.md", "年假制度.html"))
    job_id = r.json()["job"]["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as s:
        events = _sse(s.read().decode())
    assert events[-1][0] == "done" and events[-1][1]["files_done"] == 2


def test_openai_routes_in_process(client: TestClient) -> None:
    client.post("/v1/knowledge-bases", json={"name": "kb"})
    _upload(client, "kb", _files("observatory-guide.md"))
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["kb"]
    body = {"model": "kb", "messages": [{"role": "user", "content": QUESTION}]}
    r = client.post("/v1/chat/completions", json=body).json()
    message = r["choices"][0]["message"]
    assert message["citations"][0]["document_name"] == "observatory-guide.md"
    assert r["usage"]["total_tokens"] > 0
    assert r["choices"][0]["finish_reason"] == "stop"
    # Cut off at max_tokens: OpenAI clients learn it from the finish reason, streamed or not.
    cut = client.post("/v1/chat/completions", json={**body, "max_tokens": 2}).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert len(cut["choices"][0]["message"]["content"].split()) == 2
    with client.stream("POST", "/v1/chat/completions",
                       json={**body, "max_tokens": 2, "stream": True}) as s:
        chunks = [json.loads(line[6:]) for line in s.read().decode().splitlines()
                  if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    answer = client.post("/v1/knowledge-bases/kb/ask",
                         json={"query": QUESTION, "max_tokens": 2}).json()["answer"]
    assert answer["finish_reason"] == "length"
    whole = client.post("/v1/knowledge-bases/kb/ask", json={"query": QUESTION}).json()["answer"]
    assert whole["finish_reason"] == "stop"
    for bad, message in (({"n": 2}, "n must be 1"), ({"stop": list("abcde")}, "at most 4"),
                         ({"top_p": 0}, "top_p")):
        r = client.post("/v1/chat/completions", json={**body, **bad})
        assert r.status_code in (400, 422) and message in r.text, r.text
    r = client.post("/v1/chat/completions", json={**body, "model": "nope"})
    assert r.status_code == 404


def test_auth_keys_and_scopes(tmp_path: Path) -> None:
    rag = _engine(tmp_path, server={"api_keys": ["admin-key", "team-key:team"]})
    with TestClient(create_app(rag=rag)) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/v1/knowledge-bases").status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert c.get("/v1/knowledge-bases", headers=bad).json()["error"]["type"] == \
            "Unauthorized"
        admin = {"Authorization": "Bearer admin-key"}
        team = {"Authorization": "Bearer team-key"}
        for name in ("team", "other"):
            assert c.post("/v1/knowledge-bases", json={"name": name},
                          headers=admin).status_code == 201
        assert [k["name"] for k in c.get("/v1/knowledge-bases", headers=team).json()] == \
            ["team"]
        assert c.get("/v1/knowledge-bases/other", headers=team).status_code == 403
        assert c.post("/v1/knowledge-bases/other/search", json={"query": "x"},
                      headers=team).status_code == 403
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=admin).status_code == 200
    rag.close()


def test_metrics_and_readiness(client: TestClient) -> None:
    client.post("/v1/knowledge-bases", json={"name": "kb"})
    _upload(client, "kb", _files("observatory-guide.md"))
    client.post("/v1/knowledge-bases/kb/ask", json={"query": QUESTION})
    text = client.get("/metrics").text
    for name in ("rag_http_requests_total", "rag_ingest_documents_total",
                 "rag_ingest_chunks_total", "rag_retrieval_seconds",
                 "rag_generation_time_to_first_token_seconds", "rag_job_queue_depth"):
        assert name in text
    assert 'route="/v1/knowledge-bases/{kb}/ask"' in text
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["store:kb"] == "ok"


def test_headers_and_metrics_cover_every_response(tmp_path: Path) -> None:
    """The page gets its content policy, every response nosniff; a request that fails with
    an unexpected error is still counted, as the 500 the server answers."""
    rag = _engine(tmp_path)
    app = create_app(rag=rag)

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("unexpected")

    app.router.routes.insert(0, app.router.routes.pop())  # before the page's mount at /
    with TestClient(app, raise_server_exceptions=False) as c:
        page = c.get("/")
        assert page.status_code == 200
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        api = c.get("/v1/knowledge-bases")
        assert api.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" not in api.headers
        assert c.get("/v1/boom").status_code == 500
        assert c.get("/v1/nowhere").status_code == 404
        text = c.get("/metrics").text
    assert ('rag_http_requests_total{method="GET",route="/v1/boom",status="500"} 1.0'
            in text)
    assert ('rag_http_requests_total{method="GET",route="/v1/knowledge-bases",status="200"} 1.0'
            in text)
    assert 'route="unmatched",status="404"' in text
    rag.close()


def test_unfinished_jobs_are_resumed_or_failed_on_restart(tmp_path: Path) -> None:
    rag = _engine(tmp_path)
    kb = rag.create_kb("kb")
    resumable = rag.catalog.create_job("upload", kb.id, 1, status=JOB_QUEUED)
    folder = rag.data_dir / "uploads" / resumable.id
    folder.mkdir(parents=True)
    shutil.copy(SAMPLES / "observatory-guide.md", folder)
    lost = rag.catalog.create_job("upload", kb.id, 1, status=JOB_RUNNING)
    with TestClient(create_app(rag=rag)) as c:
        assert _wait(c, resumable.id)["files_done"] == 1
        failed = c.get(f"/v1/jobs/{lost.id}").json()
        assert failed["status"] == "failed" and "restart" in failed["errors"][0]["error"]
    rag.close()


class _Recording(ExtractiveGenerator):
    """The extractive generator, keeping the messages it was given."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    def stream(self, messages: list[Any], params: Any) -> Any:
        self.seen.append(messages)
        return super().stream(messages, params)


def test_openai_route_passes_the_conversation_history(tmp_path: Path) -> None:
    gen = _Recording()
    rag = RAG(make_settings(tmp_path), generator=gen, embedder=HashEmbedder())
    with TestClient(create_app(rag=rag)) as c:
        c.post("/v1/knowledge-bases", json={"name": "kb"})
        _upload(c, "kb", _files("observatory-guide.md"))
        body = {"model": "kb", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "When is the observatory open?"},
            {"role": "assistant", "content": "Tuesday to Sunday [1]."},
            {"role": "user", "content": QUESTION}]}
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        bad = {"model": "kb", "messages": [{"role": "assistant", "content": "hi"}]}
        assert c.post("/v1/chat/completions", json=bad).status_code == 422
    sent = gen.seen[-1]
    assert [m.role for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1].content == "When is the observatory open?"
    assert QUESTION in sent[-1].content
    rag.close()


def test_serve_refuses_an_open_non_loopback_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from rag.cli import app

    monkeypatch.delenv("RAG_SERVER__API_KEYS", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9"])
    assert r.exit_code == 2 and "refusing to serve 0.0.0.0 without API keys" in r.stderr


def test_the_server_reads_the_keyword_indexes_when_it_starts(tmp_path: Path) -> None:
    """After a restart, the first question does not wait for BM25's rows to be read, nor a
    Chinese one for the segmenter's dictionary; a knowledge base whose store cannot be
    reached (read first, by name) skips only itself."""
    rag = _engine(tmp_path)
    rag.ingest([SAMPLES / "observatory-guide.md"], kb="kb")
    rag.create_kb("down", store_url=f"chroma+http://127.0.0.1:{free_port()}"
                                    "?collection=xyz&timeout=3")
    rag.close()
    rag = _engine(tmp_path)
    tokens._segmenter.cache_clear()
    with TestClient(create_app(rag=rag)) as c:
        keywords = rag.indexes(rag.get_kb("kb")).keywords
        for _ in range(200):
            if keywords._memory is not None:
                break
            time.sleep(0.05)
        assert keywords._memory is not None and keywords._memory.live > 0
        assert tokens._segmenter.cache_info().currsize == 1  # for the first Chinese question
        r = c.post("/v1/knowledge-bases/kb/search", json={"query": QUESTION, "mode": "keyword"})
        assert "observatory" in r.json()["passages"][0]["document_name"]
    rag.close()


def test_an_upload_is_in_the_keyword_memory_when_its_job_is_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first question after an upload does not wait for its keyword rows to be read:
    the job reads them before it says done."""
    rag = _engine(tmp_path)
    with TestClient(create_app(rag=rag)) as c:
        assert c.post("/v1/knowledge-bases", json={"name": "kb"}).status_code == 201
        assert _upload(c, "kb", _files("observatory-guide.md"))["status"] == "done"
        reads = keyword_reads(monkeypatch)
        r = c.post("/v1/knowledge-bases/kb/search", json={"query": QUESTION, "mode": "keyword"})
        assert "observatory" in r.json()["passages"][0]["document_name"]
        assert sum(reads) == 0
    rag.close()


def test_the_server_reads_another_process_s_keyword_rows_before_a_question(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows another process writes (a batch ingestion, the CLI) are read into memory by the
    server's refresher, not by the first question after them."""
    monkeypatch.setattr(app_module, "KEYWORD_REFRESH_S", 0.05)
    rag = _engine(tmp_path)
    rag.ingest([SAMPLES / "observatory-guide.md"], kb="kb")
    with TestClient(create_app(rag=rag)):
        keywords = rag.indexes(rag.get_kb("kb")).keywords
        keywords.warm()
        assert keywords._memory is not None
        before = keywords._memory.live
        other = KeywordIndex(keywords.path)  # its own connection: another writer's
        other.upsert([("x1", "The lighthouse keeper feeds the seagulls at noon",
                       {"document_id": "dx", "document_name": "lighthouse.md"})])
        other.close()
        for _ in range(200):
            if keywords._memory.live == before + 1:
                break
            time.sleep(0.05)
        reads = keyword_reads(monkeypatch)
        assert [h.id for h in keywords.search("lighthouse seagulls", 5)] == ["x1"]
        assert sum(reads) == 0
    rag.close()
