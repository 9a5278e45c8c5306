"""Configuration owned by the stores layer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StoreConfig(BaseModel):
    """Where new knowledge bases keep their vectors.

    ``url`` is a template: ``{data_dir}`` and ``{kb}`` are filled in when a knowledge base is
    created; the resulting URL is recorded with the knowledge base.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        "faiss://{data_dir}/stores/{kb}?index=hnsw",
        description="store URL template for new knowledge bases",
    )

    def url_for(self, data_dir: str, kb: str) -> str:
        return self.url.replace("{data_dir}", data_dir.rstrip("/")).replace("{kb}", kb)
