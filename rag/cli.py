"""The ``rag`` command line (Typer). Every command that prints results takes ``--json``."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from rag.engine import RAG
from rag.errors import RagError
from rag.settings import Settings
from rag.types import to_plain
from stores.base import parse_filter

app = typer.Typer(help="Ingest documents, ask questions, get cited answers.", no_args_is_help=True)
kb_app = typer.Typer(help="Knowledge bases.", no_args_is_help=True)
docs_app = typer.Typer(help="Documents of a knowledge base.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
generators_app = typer.Typer(help="The answer-generating model.", no_args_is_help=True)
app.add_typer(generators_app, name="generators")
app.add_typer(kb_app, name="kb")
app.add_typer(docs_app, name="docs")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)

KbOpt = Annotated[str | None, typer.Option("--kb", help="knowledge base (default: RAG_DEFAULT_KB)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
SAMPLES = Path(__file__).parent / "samples"
DEMO_QUESTION = "How much is an adult ticket at the observatory?"


_ENGINES: list[RAG] = []  # made by the running command; closed when it returns


def _engine() -> RAG:
    _engine_env()
    rag = RAG.from_settings(Settings())
    _ENGINES.append(rag)
    return rag


def _closing(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command``, closing the engines it made when it returns or fails: their threads
    (model, keyword search, reranker) and stores end with the command, also when it runs
    in another program's process (CliRunner, a notebook)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        finally:
            while _ENGINES:
                _ENGINES.pop().close()

    return run


def _engine_env() -> None:
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the one-time GGUF conversion bar
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_plain(value), ensure_ascii=False, indent=2) + "\n")


def _run(fn: Any) -> Any:
    try:
        return fn()
    except RagError as exc:
        err.print(f"[red]error[/red] ({exc.type}): {exc.message}")
        raise typer.Exit(code=2) from None


@config_app.command("show")
def config_show(as_json: JsonOpt = True) -> None:
    """Print the effective settings, secrets masked."""
    _print_json(Settings().masked())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="server processes")] = 1,
) -> None:
    """Run the HTTP service: API at /v1, docs at /docs, the chat page at /."""
    import ipaddress

    import uvicorn

    settings = Settings()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not settings.server.api_keys and not settings.server.allow_no_auth:
        err.print(f"[red]refusing to serve {host} without API keys[/red]: set "
                  "RAG_SERVER__API_KEYS='[\"a-long-secret\"]' (or "
                  "RAG_SERVER__ALLOW_NO_AUTH=true to serve an open API on purpose)")
        raise typer.Exit(code=2)
    _engine_env()
    out.print(f"serving on http://{host}:{port} (docs: http://{host}:{port}/docs)")
    uvicorn.run("api.app:app_factory", factory=True, host=host, port=port, workers=workers,
                log_level="info")


@generators_app.command("check")
def generators_check(
    max_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 32,
    as_json: JsonOpt = False,
) -> None:
    """Load the configured generator, generate a few tokens, report the speed."""
    import time as _time

    from rag.generation import make_generator
    from rag.generation.base import GenerationParams, Message

    _engine_env()
    settings = Settings()
    gen = _run(lambda: make_generator(settings.generator, settings.resolved_data_dir / "models"))
    started = _time.perf_counter()
    warm = getattr(gen, "warm_up", None)
    if warm is not None:
        _run(warm)
    loaded = _time.perf_counter() - started
    messages = [Message("user", "Name three colours of the rainbow.")]
    done = _run(lambda: gen.generate(messages, GenerationParams(max_tokens=max_tokens)))
    report = {
        "backend": settings.generator.backend, "model": gen.model_id,
        "load_seconds": round(loaded, 2),
        "time_to_first_token_ms": round(done.time_to_first_token * 1000, 1),
        "tokens_per_second": round(done.tokens_per_second, 1),
        "prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
        "text": done.text,
    }
    if as_json:
        _print_json(report)
        return
    out.print(f"[bold]{report['backend']}[/bold] {report['model']}: loaded in "
              f"{loaded:.1f}s, first token {report['time_to_first_token_ms']} ms, "
              f"{report['tokens_per_second']} tokens/s ({done.completion_tokens} tokens)")
    out.print(f"  {done.text.strip()[:200]}")


@kb_app.command("create")
def kb_create(
    name: str,
    store: Annotated[str | None, typer.Option(help="store URL (default: RAG_STORE__URL)")] = None,
    description: str = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a knowledge base."""
    kb = _run(lambda: _engine().create_kb(name, store, description))
    if as_json:
        _print_json(kb)
    else:
        out.print(f"created knowledge base [bold]{kb.name}[/bold] ({kb.store_url})")


@kb_app.command("list")
def kb_list(as_json: JsonOpt = False) -> None:
    """List knowledge bases."""
    kbs = _run(lambda: _engine().list_kbs())
    if as_json:
        _print_json(kbs)
        return
    table = Table("name", "documents", "chunks", "embedding model", "store")
    for kb in kbs:
        table.add_row(kb.name, str(kb.document_count), str(kb.chunk_count),
                      kb.embedding_model, kb.store_url)
    out.print(table)


@kb_app.command("delete")
def kb_delete(name: str, yes: Annotated[bool, typer.Option("--yes", "-y")] = False) -> None:
    """Delete a knowledge base with its vectors and catalog rows."""
    if not yes:
        typer.confirm(f"Delete knowledge base {name!r} and all its documents?", abort=True)
    _run(lambda: _engine().delete_kb(name))
    out.print(f"deleted knowledge base {name}")


@kb_app.command("migrate")
def kb_migrate(
    kb: Annotated[str, typer.Option("--kb", help="knowledge base to move")],
    to: Annotated[str, typer.Option("--to", help="URL of the (empty) store to move it to")],
    drop_source: Annotated[bool, typer.Option(help="delete the old store's vectors after")]
    = False,
    as_json: JsonOpt = False,
) -> None:
    """Move a knowledge base's vectors to another store (no re-embedding), verify, switch."""
    rag = _run(_engine)
    with Progress(TextColumn("copying vectors"), BarColumn(), MofNCompleteColumn(),
                  console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("copy", total=None)
        report = _run(lambda: rag.migrate_kb(
            kb, to, drop_source, progress=lambda done, total: bar.update(
                task, completed=done, total=total)))
    if as_json:
        _print_json(report)
        return
    out.print(f"moved [bold]{report.copied}[/bold] vectors of {report.kb} to {report.to_url} "
              f"in {report.seconds:.1f}s (counts and a sample of records verified)")
    if not report.source_dropped:
        out.print(f"the old store is untouched: {report.from_url}")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files and folders (recursive)")],
    kb: KbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest files and folders; unchanged files are skipped, changed ones replaced."""
    _ingest(_engine(), paths, kb, as_json)


def _ingest(rag: RAG, paths: list[Path], kb: str | None, as_json: bool) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        err.print(f"[red]error[/red]: no such file or folder: {', '.join(missing)}")
        raise typer.Exit(code=2)
    from ingest.types import expand_paths

    total = len(list(expand_paths(paths)))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err, transient=True, disable=as_json) as progress:
        task = progress.add_task("ingesting", total=total)
        report = _run(lambda: rag.ingest(
            paths, kb, on_file=lambda r: progress.update(task, advance=1, description=r.name)
        ))
    if as_json:
        _print_json({"job_id": report.job_id, "added": report.added,
                     "replaced": report.replaced, "unchanged": report.unchanged,
                     "failed": report.failed, "chunks_written": report.chunks_written})
    else:
        out.print(
            f"{len(report.added)} added, {len(report.unchanged)} unchanged, "
            f"{len(report.replaced)} replaced, {len(report.failed)} failed; "
            f"{_count(report.chunks_written, 'chunk')} written"
        )
        for f in report.failed:
            out.print(f"  [red]failed[/red] {f.source}: {f.error}")
    if report.failed and not (report.added or report.replaced or report.unchanged):
        raise typer.Exit(code=1)


def _count(n: int, word: str) -> str:
    """``1 chunk``, ``2 chunks``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@docs_app.command("list")
def docs_list(kb: KbOpt = None, status: str | None = None, as_json: JsonOpt = False) -> None:
    """List documents with their status."""
    docs = _run(lambda: _engine().list_documents(kb, status, limit=100_000))
    if as_json:
        _print_json(docs)
        return
    table = Table("id", "name", "status", "chunks", "size", "error")
    for d in docs:
        table.add_row(d.id[:12], d.name, d.status, str(d.chunk_count), str(d.size), d.error or "")
    out.print(table)


@docs_app.command("delete")
def docs_delete(document: Annotated[str, typer.Argument(help="document id or name")],
                kb: KbOpt = None) -> None:
    """Delete a document: its vectors, keywords and catalog rows."""
    doc = _run(lambda: _engine().delete_document(document, kb))
    out.print(f"deleted {doc.name} ({_count(doc.chunk_count, 'chunk')})")


@app.command()
def search(
    query: str,
    kb: KbOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k")] = None,
    mode: Annotated[str | None, typer.Option(help="dense, keyword or hybrid")] = None,
    min_score: Annotated[float | None, typer.Option(help="dense cosine threshold")] = None,
    filter: Annotated[str | None, typer.Option(help='JSON filter, e.g. {"page": 2}')] = None,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="default: when RAG_RETRIEVAL__RERANK_MODEL is set")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the passages retrieved for a query."""
    flt = _run(lambda: parse_filter(json.loads(filter)) if filter else None)
    result = _run(lambda: _engine().search(query, kb, top_k, mode, min_score, flt,  # type: ignore[arg-type]
                                           rerank=rerank))
    if as_json:
        _print_json(result)
        return
    if not result.passages:
        out.print("no relevant passages found")
    for i, p in enumerate(result.passages, 1):
        where = p.document_name + (f" p.{p.page}" if p.page else "")
        out.print(f"[bold][{i}][/bold] {where}  score={p.score:.4f}  chunk={p.chunk_id}")
        out.print("    " + p.text.replace("\n", " ")[:300])


@app.command()
def ask(
    question: str,
    kb: KbOpt = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k")] = None,
    mode: Annotated[str | None, typer.Option(help="dense, keyword or hybrid")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        min=1, help="longest answer, in tokens (default: RAG_GENERATOR__MAX_TOKENS)")] = None,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="default: when RAG_RETRIEVAL__RERANK_MODEL is set")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from a knowledge base, streaming the answer, then its sources."""
    _ask(_engine(), question, kb, top_k, mode, as_json, max_tokens, rerank)


def _ask(rag: RAG, question: str, kb: str | None, top_k: int | None, mode: str | None,
         as_json: bool, max_tokens: int | None = None, rerank: bool | None = None) -> None:
    answer = None
    params = rag.generation_params(max_tokens)

    def run() -> None:
        nonlocal answer
        for delta in rag.ask_stream(question, kb, top_k, mode,  # type: ignore[arg-type]
                                    params=params, rerank=rerank):
            if delta.answer is not None:
                answer = delta.answer
            elif not as_json:
                out.print(delta.text, end="", soft_wrap=True, highlight=False, markup=False)

    _run(run)
    assert answer is not None
    if as_json:
        _print_json(answer)
        return
    out.print()
    if answer.finish_reason == "length":
        out.print(f"[dim](cut off at {params.max_tokens} tokens: --max-tokens or "
                  "RAG_GENERATOR__MAX_TOKENS allows longer answers)[/dim]")
    out.print()
    out.print("[bold]Answer with citations:[/bold] " + answer.text, highlight=False)
    if answer.citations:
        out.print("[bold]Sources:[/bold]")
        for c in answer.citations:
            where = c.document_name + (f", p. {c.page}" if c.page else "")
            out.print(f"  [{c.n}] {where} (chars {c.start}-{c.end}): "
                      + c.text.replace("\n", " ")[:160], highlight=False, markup=False)
    t = answer.timings
    if t.time_to_first_token_ms is not None:
        out.print(f"[dim]retrieval {t.retrieval_ms:.0f} ms, first token "
                  f"{t.time_to_first_token_ms:.0f} ms, "
                  f"{t.tokens_per_second or 0:.1f} tokens/s[/dim]")


@app.command("eval")
def eval_(
    dataset: Annotated[Path, typer.Option(help="folder with passages.jsonl and questions.jsonl")],
    kb: Annotated[str, typer.Option(help="knowledge base: filled from the dataset when new "
                                         "or empty, reused when it holds the passages")],
    mode: Annotated[str | None, typer.Option(help="dense, keyword or hybrid")] = None,
    k: Annotated[str, typer.Option("--k", help="recall cut-offs, comma-separated")] = "1,5,10",
    limit: Annotated[int, typer.Option(help="answerable questions sampled (0: all)")] = 1000,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    answers: Annotated[int, typer.Option(
        help="also generate answers for this many questions (exact match, F1) and as many "
             "unanswerable ones (abstention rate)")] = 0,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="default: when RAG_RETRIEVAL__RERANK_MODEL is set")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure retrieval (recall@k, MRR@10, nDCG@10) and, with --answers, answer quality."""
    from rag.evaluation import evaluate, load_dataset

    if mode not in (None, "dense", "keyword", "hybrid"):
        err.print(f"[red]error[/red] (InvalidInput): unknown mode {mode!r}")
        raise typer.Exit(code=2)
    try:
        ks = sorted({int(x) for x in k.split(",") if x.strip()})
    except ValueError:
        err.print(f"[red]error[/red] (InvalidInput): --k takes integers like 1,5,10, not {k!r}")
        raise typer.Exit(code=2) from None
    data = _run(lambda: load_dataset(dataset))
    rag = _engine()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"{data.name}: retrieving", total=None)
        report = _run(lambda: evaluate(
            rag, data, kb, mode, ks, limit or None, seed, answers,  # type: ignore[arg-type]
            on_progress=lambda i, n: bar.update(task, completed=i, total=n), rerank=rerank))
    if as_json:
        _print_json(report.to_dict())
        return
    reranked = "+rerank" if report.rerank else ""
    title = f"{data.name} · kb {kb} · mode {report.mode}{reranked} · {report.questions} questions"
    table = Table(title=title, min_width=len(title))  # a title on one line
    for col in ("metric", "value"):
        table.add_column(col)
    for name, value in {**report.retrieval, **report.answers}.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("retrieval ms (p50)", f"{report.retrieval_ms_p50:.1f}")
    out.print(table)
    if report.rerank:
        out.print(f"reranked by {report.rerank} (--no-rerank: the first stage alone)")
    if not report.ingest.get("reused"):
        out.print(f"ingested {report.ingest['documents']} passages as {report.ingest['chunks']} "
                  f"chunks in {report.ingest['seconds']} s "
                  f"({report.ingest['chunks_per_s']} chunks/s)")


@app.command()
def demo(question: str = DEMO_QUESTION) -> None:
    """Ingest the bundled sample documents into the default knowledge base and ask a question."""
    rag = _engine()
    out.print(f"[bold]Ingesting sample documents[/bold] from {SAMPLES}")
    _ingest(rag, [p for p in sorted(SAMPLES.iterdir()) if p.suffix != ".py"], None, False)
    out.print(f"\n[bold]Question:[/bold] {question}\n")
    _ask(rag, question, None, None, None, False)


def main() -> None:  # pragma: no cover - console entry point
    app()


for _group in (app, kb_app, docs_app, config_app, generators_app):
    for _info in _group.registered_commands:
        if _info.callback is not None:
            _info.callback = _closing(_info.callback)
