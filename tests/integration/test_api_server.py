"""The service as users run it: a real uvicorn process on 127.0.0.1 with the packaged MiniLM
and SmolLM2, driven by our SDK, the official ``openai`` client, and our OpenAI-compatible
generator backend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.client import AskDelta, AskSources, AsyncClient, Client
from rag.generation.base import GenerationParams, Message
from rag.generation.openai_backend import OpenAIGenerator
from rag.settings import GeneratorConfig, OpenAIConfig
from rag.types import Answer
from stores.errors import NotFound, RagError, UnsupportedFileType
from tests.conftest import SAMPLES
from tests.servers import serve_api

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789"
QUESTION = "How much is an adult ticket at the observatory?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_model: Path) -> Iterator[str]:
    # SmolLM2 is converted once, outside the server
    with serve_api("rag-serve", tmp_path_factory.mktemp("server-data"),
                   {"RAG_GENERATOR__MODEL": str(smollm2_model),
                    "RAG_SERVER__API_KEYS": f'["{KEY}"]'}) as url:
        yield url


@pytest.fixture(scope="module")
def loaded(server: str) -> str:
    with Client(server, api_key=KEY) as c:
        c.create_kb("guide")
        seen = []
        jobs = c.upload("guide", [SAMPLES], progress=seen.append)
        assert seen and all(j.status == "queued" for j in seen)
        final = [c.wait(j.id) for j in jobs]
        assert all(j.status == "done" for j in final)
        assert sum(j.files_done for j in final) == 5  # build_pdf.py is not even sent
    return server


def test_sdk_end_to_end(loaded: str) -> None:
    with Client(loaded, api_key=KEY) as c:
        docs = c.list_documents("guide")
        assert len(docs) == 5 and {d.status for d in docs} == {"indexed"}
        result = c.search("guide", "西湖龙井产于哪里？", top_k=2)
        assert result.passages[0].document_name == "绿茶与红茶.md"
        answer = c.ask("guide", QUESTION)
        assert isinstance(answer, Answer) and "12" in answer.text
        assert answer.citations[0].document_name == "observatory-guide.md"
        assert answer.finish_reason == "stop"
        assert c.ask("guide", QUESTION, max_tokens=2).finish_reason == "length"
        pieces = list(c.ask("guide", QUESTION, stream=True))
        assert isinstance(pieces[0], AskSources) and isinstance(pieces[-1], Answer)
        assert "".join(p.text for p in pieces if isinstance(p, AskDelta)).strip()
        with pytest.raises(NotFound):
            c.get_kb("nope")
        bad = Path(__file__).parent / "bad.exe"
        bad.write_bytes(b"MZ")
        try:
            with pytest.raises(UnsupportedFileType):
                c.upload("guide", [bad])
        finally:
            bad.unlink()
    with Client(loaded) as anonymous, pytest.raises(RagError) as info:
        anonymous.list_kbs()
    assert info.value.status_code == 401


def test_async_sdk(loaded: str) -> None:
    async def main() -> tuple[int, list[object]]:
        c = AsyncClient(loaded, api_key=KEY)
        try:
            kbs = await c.list_kbs()
            pieces = [p async for p in c.ask_stream("guide", QUESTION)]
            return len(kbs), pieces
        finally:
            await c.aclose()

    n, pieces = asyncio.run(main())
    assert n == 1 and isinstance(pieces[-1], Answer) and pieces[-1].citations


def test_official_openai_client_gets_cited_answers(loaded: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{loaded}/v1", api_key=KEY)
    assert "guide" in [m.id for m in client.models.list()]
    r = client.chat.completions.create(
        model="guide", messages=[{"role": "user", "content": QUESTION}], max_tokens=60)
    message = r.choices[0].message
    assert "12" in (message.content or "")
    cites = (message.model_extra or {})["citations"]
    assert cites[0]["document_name"] == "observatory-guide.md"
    assert r.usage is not None and r.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="guide", messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True})
    text, final_cites = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            final_cites = (chunk.model_extra or {}).get("citations") or final_cites
    assert "12" in text and final_cites and final_cites[0]["document_name"] == \
        "observatory-guide.md"
    # The request's stop sequences reach the model (they were dropped before).
    stopped = client.chat.completions.create(
        model="guide", messages=[{"role": "user", "content": QUESTION}], max_tokens=60,
        stop=["euros"], top_p=0.9, seed=7)
    assert "12" in (stopped.choices[0].message.content or "")
    assert "euros" not in (stopped.choices[0].message.content or "")
    assert stopped.choices[0].finish_reason == "stop"


def test_our_openai_backend_against_our_endpoint(loaded: str) -> None:
    gen = OpenAIGenerator(GeneratorConfig(
        backend="openai", model="guide",
        openai=OpenAIConfig(base_url=f"{loaded}/v1", api_key=KEY)))  # type: ignore[arg-type]
    done = gen.generate([Message("user", QUESTION)], GenerationParams(max_tokens=60))
    assert "12" in done.text and done.completion_tokens > 0
    cut = gen.generate([Message("user", QUESTION)], GenerationParams(max_tokens=60,
                                                                     stop=("euros",)))
    assert "12" in cut.text and "euros" not in cut.text
    assert gen.generate([Message("user", QUESTION)],
                        GenerationParams(max_tokens=2)).finish_reason == "length"
