"""GPU tests: run where a CUDA (or ROCm/DCU) GPU and the GPU builds are present; skipped
elsewhere with the reason. Run them on a GPU machine with ``pytest -m gpu``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from stores import open_store
from stores.base import Eq, Record

pytestmark = pytest.mark.gpu


def _faiss_gpus() -> int:
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "StandardGpuResources") else 0


@pytest.mark.skipif(_faiss_gpus() == 0,
                    reason="no FAISS GPU: needs faiss-gpu (or faiss-gpu-cu12) and a CUDA GPU")
@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_faiss_gpu_matches_cpu(tmp_path: Path, index: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 384)).astype(np.float32)
    recs = [Record(f"r{i}", x[i], "", {"even": i % 2 == 0}) for i in range(len(x))]
    params = "&nlist=64&nprobe=64" if index == "ivf" else ""
    cpu = open_store(f"faiss://{tmp_path}/cpu?index={index}{params}")
    gpu = open_store(f"faiss://{tmp_path}/gpu?index={index}{params}&device=gpu")
    for store in (cpu, gpu):
        store.upsert(recs)
    for q in x[:50]:
        assert [h.id for h in gpu.query(q, 10)] == [h.id for h in cpu.query(q, 10)]
    assert gpu.query(x[1], 1, Eq("even", True))[0].id != "r1"


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


needs_cuda = pytest.mark.skipif(not _cuda(), reason="no CUDA/ROCm GPU visible to torch")


@needs_cuda
def test_transformers_backend_on_gpu_in_bf16(tmp_path: Path) -> None:
    import threading

    from rag.generation.base import GenerationParams, Message
    from rag.generation.transformers_backend import TransformersGenerator
    from rag.settings import GeneratorConfig
    from tests.tiny_llm import build_tiny_llama

    folder = build_tiny_llama(tmp_path / "tiny", seed=3)
    gen = TransformersGenerator(GeneratorConfig(model=str(folder)), tmp_path)
    gen.warm_up()
    assert gen.device == "cuda"
    assert str(next(gen._model.parameters()).dtype) in ("torch.bfloat16", "torch.float16")
    ask = [Message("user", "What does an adult ticket cost?")]
    params = GenerationParams(max_tokens=16)
    single = gen.generate(ask, params)
    assert single.completion_tokens > 0
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(gen.generate(ask, params).text))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(out) == 8


@needs_cuda
def test_embedding_on_gpu_matches_cpu() -> None:
    from ingest.config import EmbeddingConfig
    from ingest.embedding import SentenceTransformerEmbedder

    texts = ["An adult ticket costs 12 euros.", "西湖龙井产于杭州。"]
    gpu = SentenceTransformerEmbedder(EmbeddingConfig(device="auto"))
    cpu = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    a, b = gpu.embed_documents(texts), cpu.embed_documents(texts)
    assert gpu.device is not None and gpu.device.startswith("cuda")
    assert str(next(gpu.model.parameters()).dtype) == "torch.float16"  # fp16 on a GPU
    assert np.allclose((a * b).sum(axis=1), 1.0, atol=1e-2)
    # No cuDNN attention: it plans each new batch shape again on each thread (ingestion's
    # first pass ran twice as slow on an H100).
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gpu._encode([*texts, "a longer third text, so the batch has another shape " * 3])
    names = {e.key for e in prof.key_averages()}
    assert "aten::scaled_dot_product_attention" in names
    assert not any("cudnn_attention" in n for n in names), sorted(names)


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_backend_on_gpu(tmp_path: Path) -> None:
    import asyncio

    from rag.generation.base import GenerationParams, Message
    from rag.generation.vllm_backend import VLLMGenerator
    from rag.settings import GeneratorConfig, VLLMConfig
    from tests.tiny_llm import build_tiny_llama

    folder = build_tiny_llama(tmp_path / "tiny", seed=3)
    gen = VLLMGenerator(GeneratorConfig(backend="vllm", model=str(folder), dtype="bfloat16",
                                        vllm=VLLMConfig(max_model_len=1024,
                                                        gpu_memory_utilization=0.3)), tmp_path)
    ask = [Message("user", "What does an adult ticket cost?")]
    params = GenerationParams(max_tokens=16)
    single = gen.generate(ask, params).text

    async def many() -> list[str]:
        return [c.text for c in await asyncio.gather(*(gen.agenerate(ask, params)
                                                       for _ in range(16)))]

    assert asyncio.run(many()) == [single] * 16
