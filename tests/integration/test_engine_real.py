"""The engine with the real packaged models, offline."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import app
from rag.engine import RAG
from rag.generation.base import GenerationParams
from rag.settings import Settings
from tests.conftest import SAMPLES, make_settings


@pytest.fixture
def real_rag(tmp_path: Path, real_embedder) -> Iterator[RAG]:  # type: ignore[no-untyped-def]
    rag = RAG(make_settings(tmp_path), embedder=real_embedder)
    rag.ingest([p for p in SAMPLES.iterdir() if p.suffix != ".py"])
    yield rag
    rag.close()


@pytest.mark.parametrize(
    ("question", "document", "needle"),
    [
        ("西湖龙井产于哪里？", "绿茶与红茶.md", "杭州"),
        ("红茶可以保存多久？", "绿茶与红茶.md", "两到三年"),
        ("年假没有休完怎么办？", "年假制度.html", "顺延"),
        ("When does the observatory open on weekends?", "observatory-guide.md", "4 pm"),
        ("How long until I get my refund?", "returns-policy.html", "5 business days"),
        ("How long does green tea keep its taste?", "tea-brewing.pdf", "twelve months"),
    ],
)
def test_real_embedder_retrieves_the_right_passage(
    real_rag: RAG, question: str, document: str, needle: str
) -> None:
    top = real_rag.search(question).passages[0]
    assert top.document_name == document
    assert needle in top.text


def test_unrelated_questions_find_nothing(real_rag: RAG) -> None:
    assert real_rag.search("What is the capital of Mongolia?").passages == []
    assert real_rag.search("火星有几颗卫星？").passages == []


def test_cli_ingest_search_docs_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs"
    shutil.copytree(SAMPLES, docs, ignore=shutil.ignore_patterns("*.py"))
    (docs / "bad.xyz").write_text("?")
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", str(docs), "--kb", "cli", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert len(summary["added"]) == 5 and summary["failed"][0]["name"] == "bad.xyz"
    r = runner.invoke(app, ["ingest", str(docs), "--kb", "cli"])
    assert "0 added, 5 unchanged, 0 replaced, 1 failed" in r.stdout
    r = runner.invoke(app, ["search", "年假可以顺延到什么时候", "--kb", "cli", "-k", "2", "--json"])
    result = json.loads(r.stdout)
    first = result["passages"][0]
    assert first["document_name"] == "年假制度.html" and first["chunk_id"] and first["score"] > 0
    r = runner.invoke(app, ["docs", "list", "--kb", "cli", "--json"])
    assert {d["status"] for d in json.loads(r.stdout)} == {"indexed", "failed"}
    r = runner.invoke(app, ["docs", "delete", "年假制度.html", "--kb", "cli"])
    assert r.exit_code == 0 and "deleted 年假制度.html (1 chunk)" in r.stdout, r.stdout
    r = runner.invoke(app, ["search", "年假可以顺延到什么时候", "--kb", "cli", "--json"])
    assert all(p["document_name"] != "年假制度.html" for p in json.loads(r.stdout)["passages"])
    r = runner.invoke(app, ["search", "x", "--kb", "nope"])
    assert r.exit_code == 2 and "NotFound" in r.stderr
    r = runner.invoke(app, ["config", "show"])
    assert json.loads(r.stdout)["data_dir"] == str(tmp_path / "data")


@pytest.mark.slow
def test_packaged_smollm2_answers_with_citation(real_rag: RAG,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    answer = real_rag.ask("How much is an adult ticket at the observatory?")
    assert "12" in answer.text
    assert answer.citations and answer.citations[0].document_name == "observatory-guide.md"
    span = answer.citations[0]
    assert "12 euros" in span.text
    assert answer.timings.time_to_first_token_ms and answer.usage.completion_tokens > 0
    assert answer.finish_reason == "stop"  # the model ended it
    assert (real_rag.data_dir / "models" / "smollm2-135m-instruct" / "config.json").exists()
    cut = real_rag.ask("How much is an adult ticket at the observatory?",
                       params=GenerationParams(max_tokens=3))
    assert cut.finish_reason == "length" and cut.usage.completion_tokens == 3
    # The CLI says so (the converted model in the same data folder loads in a moment).
    monkeypatch.setenv("RAG_DATA_DIR", str(real_rag.data_dir))
    monkeypatch.setenv("RAG_GENERATOR__MAX_TOKENS", "3")
    r = CliRunner().invoke(app, ["ask", "How much is an adult ticket at the observatory?"])
    assert r.exit_code == 0, r.output
    assert "(cut off at 3 tokens: --max-tokens or RAG_GENERATOR__MAX_TOKENS allows longer " \
        "answers)" in " ".join(r.stdout.split())
    r = CliRunner().invoke(app, ["ask", "How much is an adult ticket at the observatory?",
                                 "--max-tokens", "60", "--no-rerank"])
    assert r.exit_code == 0 and "12 euros" in r.stdout and "cut off" not in r.stdout, r.output


def test_settings_type_is_used(tmp_path: Path) -> None:
    assert isinstance(make_settings(tmp_path), Settings)


def test_long_texts_are_truncated_not_fatal(real_embedder) -> None:  # type: ignore[no-untyped-def]
    long = "observatory ticket " * 1500  # far past the model's 512 positions
    assert real_embedder.count_tokens(long) > 2000
    assert real_embedder.embed_documents([long, "short"]).shape == (2, real_embedder.dim)
    assert real_embedder.embed_query(long).shape == (real_embedder.dim,)


def test_worker_processes_prepare_the_same_chunks_and_keywords(
        tmp_path: Path, real_embedder, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """``prepare_workers``: files parsed, chunked and keyword-tokenized in worker processes
    give what the ingesting thread gives (chunks, token counts, keyword matches, the same
    failures); closing the engine ends the processes."""
    import psutil

    from tests.unit.test_pipeline import assert_consistent

    docs = _worker_docs(tmp_path)
    seen = {}
    for workers in (0, 2):
        rag = RAG(make_settings(tmp_path / f"w{workers}", ingest={"prepare_workers": workers}),
                  embedder=real_embedder)
        report = rag.ingest([docs])
        assert len(report.added) == 45
        failed = sorted((r.name, r.error) for r in report.failed)
        chunks = sorted((d.name, c.ordinal, c.text, c.token_count)
                        for d in rag.list_documents(limit=100)
                        for c in rag.catalog.list_chunks(d.id, 0, 1000))
        hits = [[p.text for p in rag.search(q, mode="keyword").passages]
                for q in ("西湖龙井", "refund business days", "Sentence 12 of note 31")]
        seen[workers] = (failed, chunks, hits)
        assert_consistent(rag)
        kids = [p for p in psutil.Process().children() if "ingest.prepare" in p.cmdline()]
        assert len(kids) == workers
        rag.close()
        assert not [p for p in kids if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert seen[2] == seen[0]
    assert [name for name, _ in seen[0][0]] == ["broken.pdf", "empty.txt"]


def _worker_docs(tmp_path: Path) -> Path:
    """The samples, 40 notes, an empty file and a broken PDF: 45 files to add, 2 to fail."""
    docs = tmp_path / "docs"
    shutil.copytree(SAMPLES, docs, ignore=shutil.ignore_patterns("*.py"))
    for i in range(40):
        (docs / f"note-{i:02}.md").write_text(
            f"# Note {i}\n\n" + " ".join(f"Sentence {j} of note {i}." for j in range(30 + i)))
    (docs / "empty.txt").write_text("   ")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    return docs


@pytest.mark.parametrize("replies_first", [False, True])
def test_a_worker_that_dies_fails_its_files_with_a_message(
        tmp_path: Path, real_embedder, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
        replies_first: bool) -> None:
    """A worker process that dies: its batch fails with "the ingestion worker process
    failed", the ingestion goes on, and the next one adds the lost files. Which side sees
    the death first is a race: the write of the request, or (``replies_first``, made sure
    of by a pause) the thread reading the replies; the message is the same."""
    import os
    import signal
    import time

    import ingest.prepare
    from tests.unit.test_pipeline import assert_consistent

    docs = _worker_docs(tmp_path)
    rag = RAG(make_settings(tmp_path / "killed", ingest={"prepare_workers": 1}),
              embedder=real_embedder)
    real_write = ingest.prepare._write
    killed: list[int] = []

    def die_first(stream, value):  # type: ignore[no-untyped-def]
        if not killed:  # the process dies just before its first request
            proc = rag.pipeline._workers[0]._proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.append(proc.pid)
            if replies_first:
                time.sleep(0.5)  # the reply thread meets the end of the output meanwhile
        real_write(stream, value)

    monkeypatch.setattr(ingest.prepare, "_write", die_first)
    report = rag.ingest([docs])
    lost = [r for r in report.failed if r.name not in ("broken.pdf", "empty.txt")]
    assert killed and lost and len(lost) + len(report.added) == 45
    assert all("ingestion worker process failed" in (r.error or "") for r in lost)
    assert_consistent(rag)
    again = rag.ingest([docs])  # a new process: the failed files are ingested now
    assert sorted(again.added) == sorted(r.name for r in lost)
    assert_consistent(rag)
    rag.close()
