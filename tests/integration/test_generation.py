"""Generation backends on a tiny random Llama built in the test: streaming, stop sequences,
token counts, concurrency and batching, cancellation, async twins; the OpenAI-compatible
backend against a real server on 127.0.0.1, with its faults."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.engine import RAG
from rag.generation import make_generator
from rag.generation.base import GenerationParams, Message, collect
from rag.generation.openai_backend import OpenAIGenerator
from rag.generation.transformers_backend import TransformersGenerator, _Request, _safe_prefix
from rag.settings import GeneratorConfig, OpenAIConfig
from stores.errors import GenerationError, InvalidInput, ModelUnavailable
from tests.conftest import SAMPLES, make_settings
from tests.helpers import HashEmbedder
from tests.servers import REPO, free_port, http_ready, python, serve
from tests.tiny_llm import build_tiny_llama

ASK = [Message("system", "Answer from the passages."),
       Message("user", "Passages: [1] An adult ticket costs 12 euros. Question: price?")]
GREEDY = GenerationParams(max_tokens=24)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", seed=3)


@pytest.fixture(scope="session")
def tiny(tiny_model: Path) -> TransformersGenerator:
    gen = TransformersGenerator(GeneratorConfig(model=str(tiny_model), max_batch=8),
                                tiny_model.parent)
    gen.warm_up()
    return gen


def test_streaming_text_and_token_counts(tiny: TransformersGenerator) -> None:
    deltas = list(tiny.stream(ASK, GREEDY))
    final = deltas[-1].completion
    assert final is not None and all(d.completion is None for d in deltas[:-1])
    assert "".join(d.text for d in deltas) == final.text
    assert final.prompt_tokens == tiny.count_tokens(ASK)
    assert 0 < final.completion_tokens <= GREEDY.max_tokens
    if final.finish_reason == "length":
        assert final.completion_tokens == GREEDY.max_tokens
    assert 0 < final.time_to_first_token <= final.total_time
    assert tiny.generate(ASK, GREEDY).text == final.text, "greedy is deterministic"


def test_stop_sequences_cut_the_text_and_never_stream_it(tiny: TransformersGenerator) -> None:
    reference = tiny.generate(ASK, GenerationParams(max_tokens=40)).text
    assert len(reference) >= 12, f"the tiny model should say something: {reference!r}"
    stop = reference[6:9]
    cut = reference.find(stop)
    deltas = list(tiny.stream(ASK, GenerationParams(max_tokens=40, stop=(stop,))))
    final = deltas[-1].completion
    assert final is not None
    assert final.text == reference[:cut] and final.finish_reason == "stop"
    assert stop not in "".join(d.text for d in deltas)


def test_an_answer_cut_inside_a_character_does_not_end_in_a_replacement_mark(
        tiny: TransformersGenerator) -> None:
    """A byte-level model can reach max_tokens halfway through a character's bytes: the
    unfinished character is dropped, not shown as U+FFFD (the web page showed "红\ufffd")."""
    ids = tiny._tokenizer.encode("红茶", add_special_tokens=False)
    assert "\ufffd" in tiny._tokenizer.decode(ids[:1]), "a token holding part of 红"
    for limit in range(1, len(ids) + 1):
        req = _Request([], GenerationParams(max_tokens=limit))
        for token in ids[:limit]:
            tiny._accept(req, token)
        assert req.done and req.finish == "length"
        assert "\ufffd" not in req.sent
        assert "红茶".startswith(req.sent)
    assert req.sent == "红茶"


def test_safe_prefix_holds_back_a_possible_stop() -> None:
    assert _safe_prefix("abc\n\nQ", ("\n\nQuestion",)) == "abc"
    assert _safe_prefix("abc", ("xyz",)) == "abc"
    assert _safe_prefix("ab\ufffd", ()) == "ab"


def test_concurrent_requests_are_batched_and_match_sequential(tiny: TransformersGenerator
                                                              ) -> None:
    prompts = [[Message("user", f"Question {i}: what does the observatory cost?")]
               for i in range(6)]
    sequential = [tiny.generate(p, GREEDY).text for p in prompts]
    before = tiny.batches_run
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(prompts))

    def ask(i: int) -> None:
        barrier.wait()
        results[i] = tiny.generate(prompts[i], GREEDY).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(len(prompts))] == sequential
    assert tiny.batches_run - before < len(prompts), "waiting requests shared a batch"


def test_closing_a_stream_frees_its_row(tiny: TransformersGenerator) -> None:
    stream = tiny.stream(ASK, GenerationParams(max_tokens=200))
    next(stream)
    stream.close()  # the client went away
    started = time.perf_counter()
    assert tiny.generate(ASK, GenerationParams(max_tokens=4)).completion_tokens <= 4
    assert time.perf_counter() - started < 60


def test_async_twins(tiny: TransformersGenerator) -> None:
    async def main() -> list[str]:
        pieces = [d.text async for d in tiny.astream(ASK, GREEDY)]
        many = await asyncio.gather(*(tiny.agenerate(ASK, GREEDY) for _ in range(3)))
        return ["".join(pieces), *(c.text for c in many)]

    texts = asyncio.run(main())
    assert len(set(texts)) == 1 and texts[0] == tiny.generate(ASK, GREEDY).text


def test_the_model_loads_on_a_thread_of_its_own_and_the_scheduler_ends_when_idle(
        tiny_model: Path) -> None:
    """PyTorch's thread teams slow each other down while their threads live, so neither the
    load nor an idle scheduler may leave one behind; a later request starts a new scheduler."""
    gen = TransformersGenerator(GeneratorConfig(model=str(tiny_model)), tiny_model.parent)
    gen.idle_exit_s = 0.2
    gen.warm_up()
    loaders = [t for t in threading.enumerate() if t.name.startswith("rag-transformers-load")]
    assert loaders == [] and gen._worker is None, "the loading thread ended with the load"
    first = gen.generate(ASK, GREEDY)
    scheduler = gen._worker
    assert scheduler is not None
    scheduler.join(10)
    assert not scheduler.is_alive() and gen._worker is None
    again = gen.generate(ASK, GREEDY)
    assert again.text == first.text and gen._worker is not scheduler
    with pytest.raises(InvalidInput, match="context window"):  # errors still reach the caller
        gen.generate(ASK, GenerationParams(max_tokens=5000))


def test_close_and_the_end_of_the_program_stop_the_scheduler(tiny_model: Path,
                                                            tmp_path: Path) -> None:
    """A program that ended while the scheduler thread was alive (idle, within
    IDLE_EXIT_S of its last answer) could abort at exit: "terminate called without an
    active exception", exit code 134, seen with SmolLM2 after three answers."""
    gen = TransformersGenerator(GeneratorConfig(model=str(tiny_model)), tiny_model.parent)
    first = gen.generate(ASK, GREEDY)
    scheduler = gen._worker
    assert scheduler is not None and scheduler.is_alive()
    gen.close()
    assert not scheduler.is_alive() and gen._worker is None
    assert gen.generate(ASK, GREEDY).text == first.text  # a later request starts another
    gen.close()
    # At the end of a program that never called close(): the atexit hook registered first
    # runs last, and sees no scheduler left.
    script = (
        "import atexit, threading\n"
        "atexit.register(lambda: print('left:', [t.name for t in threading.enumerate()\n"
        "                                         if t.name.startswith('rag-')]))\n"
        "from pathlib import Path\n"
        "from rag.generation.base import GenerationParams, Message\n"
        "from rag.generation.transformers_backend import TransformersGenerator\n"
        "from rag.settings import GeneratorConfig\n"
        f"config = GeneratorConfig(model={str(tiny_model)!r})\n"
        f"gen = TransformersGenerator(config, Path({str(tmp_path)!r}))\n"
        "gen.generate([Message('user', 'price?')], GenerationParams(max_tokens=4))\n"
        "print('alive:', gen._worker is not None and gen._worker.is_alive())\n")
    run = subprocess.run([python(), "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "alive: True" in run.stdout and "left: []" in run.stdout, run.stdout


def test_a_failed_load_is_reported_to_the_caller(tmp_path: Path) -> None:
    gen = TransformersGenerator(GeneratorConfig(model=str(tmp_path / "nowhere")), tmp_path)
    with pytest.raises(ModelUnavailable, match="cannot load generation model"):
        gen.warm_up()


def test_context_window_is_enforced(tiny: TransformersGenerator) -> None:
    with pytest.raises(InvalidInput, match="context window"):
        tiny.generate(ASK, GenerationParams(max_tokens=5000))


def test_backend_selection_by_settings(tiny_model: Path) -> None:
    cfg = GeneratorConfig(backend="openai", openai=OpenAIConfig(base_url="http://127.0.0.1:9"))
    assert isinstance(make_generator(cfg, tiny_model.parent), OpenAIGenerator)
    cfg = GeneratorConfig(model=str(tiny_model))
    assert isinstance(make_generator(cfg, tiny_model.parent), TransformersGenerator)
    with pytest.raises(InvalidInput, match="BASE_URL"):
        make_generator(GeneratorConfig(backend="openai"), tiny_model.parent)


def test_dtype_auto_is_bfloat16_on_a_cpu_that_computes_it(
        tiny: TransformersGenerator, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: bf16 on a CPU that computes it (faster decoding, the same answers' quality on
    SQuAD), else fp32; a dtype set is kept. The loaded model is in the chosen dtype."""
    import torch

    from ingest.config import native_bfloat16
    from rag.generation import transformers_backend

    assert tiny._model.dtype == (torch.bfloat16 if native_bfloat16() else torch.float32)
    for has, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(transformers_backend, "native_bfloat16", lambda has=has: has)
        assert tiny._dtype(torch, "cpu") == dtype
    pinned = TransformersGenerator(GeneratorConfig(model=str(tiny_model), dtype="float32"),
                                   tiny_model.parent)
    assert pinned._dtype(torch, "cpu") == torch.float32


# -- the OpenAI-compatible backend against a real server ------------------------------------

@pytest.fixture
def server(tiny_model: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with serve("openai-server", [python(), "-m", "tests.openai_server", "--port", str(port),
                                 "--model-dir", str(tiny_model)], port, tmp_path,
               ready=http_ready(f"http://127.0.0.1:{port}/v1/models"),
               env={"PYTHONPATH": str(REPO)}):
        yield f"http://127.0.0.1:{port}/v1"


def _client(url: str, **overrides: object) -> OpenAIGenerator:
    opts: dict[str, object] = {"base_url": url, "timeout": 20.0, "backoff_s": 0.05,
                               **overrides}
    return OpenAIGenerator(GeneratorConfig(backend="openai",
                                           openai=OpenAIConfig(**opts)))  # type: ignore[arg-type]


def test_openai_backend_streams_the_same_answer(server: str, tiny: TransformersGenerator
                                                ) -> None:
    gen = _client(server)
    assert gen.model_id == "tiny-llama" and gen.context_window == tiny.context_window
    deltas = list(gen.stream(ASK, GREEDY))
    final = deltas[-1].completion
    assert final is not None
    expected = tiny.generate(ASK, GREEDY)
    assert final.text == expected.text == "".join(d.text for d in deltas)
    assert final.prompt_tokens == expected.prompt_tokens
    assert final.completion_tokens == expected.completion_tokens
    assert gen.generate(ASK, GREEDY).text == expected.text
    texts = asyncio.run(_gather(gen))
    assert texts == [expected.text] * 4


async def _gather(gen: OpenAIGenerator) -> list[str]:
    return [c.text for c in await asyncio.gather(*(gen.agenerate(ASK, GREEDY)
                                                   for _ in range(4)))]


def _faults(url: str, **faults: object) -> None:
    httpx.post(url.replace("/v1", "/_test/faults"), json=faults, timeout=5).raise_for_status()


def _requests(url: str) -> int:
    return int(httpx.get(url.replace("/v1", "/_test/stats"), timeout=5).json()["chat_requests"])


def test_openai_429_then_success_is_retried(server: str) -> None:
    gen = _client(server)
    _faults(server, statuses=[429, 503])
    assert gen.generate(ASK, GREEDY).completion_tokens > 0
    assert _requests(server) == 3


def test_openai_slow_server_times_out(server: str) -> None:
    gen = _client(server, timeout=1.0)
    _faults(server, delay_s=5)
    started = time.perf_counter()
    with pytest.raises(GenerationError, match="did not answer within"):
        gen.generate(ASK, GREEDY)
    assert time.perf_counter() - started < 4


def test_openai_server_killed_mid_stream(server: str) -> None:
    gen = _client(server)
    _faults(server, die_after_chunks=2)
    got: list[str] = []
    with pytest.raises(GenerationError):
        for delta in gen.stream(ASK, GenerationParams(max_tokens=40)):
            got.append(delta.text)
    assert got, "text already streamed is kept by the caller; the error follows it"


def test_openai_circuit_breaker_fails_fast(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gen = _client(dead, max_retries=0, breaker_failures=2, breaker_reset_s=60)
    gen._model, gen._context = "m", 2048  # nothing to discover on a dead server
    for _ in range(2):
        with pytest.raises(GenerationError):
            gen.generate(ASK, GREEDY)
    started = time.perf_counter()
    with pytest.raises(GenerationError, match="not calling it"):
        gen.generate(ASK, GREEDY)
    assert time.perf_counter() - started < 0.1
    assert collect  # imported for the stream tests above


def test_cli_generators_check(server: str, tiny_model: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from rag.cli import app

    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAG_GENERATOR__MODEL", str(tiny_model))
    r = CliRunner().invoke(app, ["generators", "check", "--max-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    local = json.loads(r.stdout)
    assert local["backend"] == "transformers" and local["completion_tokens"] > 0
    monkeypatch.setenv("RAG_GENERATOR__BACKEND", "openai")
    monkeypatch.setenv("RAG_GENERATOR__MODEL", "tiny-llama")
    monkeypatch.setenv("RAG_GENERATOR__OPENAI__BASE_URL", server)
    r = CliRunner().invoke(app, ["generators", "check", "--max-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    remote = json.loads(r.stdout)
    assert remote["text"] == local["text"] and remote["tokens_per_second"] > 0
    monkeypatch.setenv("RAG_GENERATOR__OPENAI__BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("RAG_GENERATOR__OPENAI__MAX_RETRIES", "0")
    r = CliRunner().invoke(app, ["generators", "check"])
    assert r.exit_code == 2 and "ModelUnavailable" in r.stderr and "cannot list models" in r.stderr


def test_prompt_budget_drops_lowest_ranked_passages_first(tiny: TransformersGenerator) -> None:
    from rag.prompts import SYSTEM_ZH, build_messages, fit_passages
    from rag.types import Passage

    passages = [Passage(f"c{i}", "d", "doc.md", f"Passage number {i}. " * 12, 0, 10, None,
                        1.0 - i / 10, None, None) for i in range(8)]
    budget = 260
    kept = fit_passages("What is it?", passages, tiny.count_tokens, budget)
    assert 0 < len(kept) < len(passages) and kept == passages[: len(kept)]
    assert tiny.count_tokens(build_messages("What is it?", kept)) <= budget
    more = passages[: len(kept) + 1]
    assert tiny.count_tokens(build_messages("What is it?", more)) > budget
    zh = build_messages("年假可以顺延吗？", kept)
    assert zh[0].content == SYSTEM_ZH and "用提问所用的语言回答" in SYSTEM_ZH


def test_an_engine_closes_the_generator_it_made(server: str, tmp_path: Path) -> None:
    """``with RAG(...)``: leaving the block closes what the engine made, the openai
    backend's connections included; a generator handed in stays its owner's."""
    settings = make_settings(tmp_path, generator={
        "backend": "openai", "openai": {"base_url": server, "timeout": 20.0}})
    with RAG(settings, embedder=HashEmbedder()) as rag:
        rag.ingest([SAMPLES / "observatory-guide.md"])
        assert rag.ask("How much is an adult ticket?", params=GREEDY).usage.completion_tokens > 0
        gen = rag.generator
        assert isinstance(gen, OpenAIGenerator) and gen._clients
        threads = [t for t in threading.enumerate() if t.name.startswith("rag-bm25")]
        threads.append(gen._loop._thread)  # type: ignore[arg-type]
    assert not gen._clients  # closed with the engine
    assert not [t for t in threads if t.is_alive()]
    given = _client(server)
    with RAG(make_settings(tmp_path / "given"), generator=given, embedder=HashEmbedder()) as rag:
        rag.ingest([SAMPLES / "observatory-guide.md"])
        rag.ask("How much is an adult ticket?", params=GREEDY)
    assert given._clients  # not the engine's to close
    assert given.generate(ASK, GREEDY).completion_tokens > 0
    loop_thread = given._loop._thread
    given.close()
    assert loop_thread is not None and not loop_thread.is_alive()
    assert given.generate(ASK, GREEDY).completion_tokens > 0  # opened again
    given.close()
