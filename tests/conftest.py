from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.engine import RAG
from rag.settings import Settings
from tests.helpers import ExtractiveGenerator, HashEmbedder

pytest_plugins = ["tests.store_servers"]

SAMPLES = Path(__file__).resolve().parent.parent / "rag" / "samples"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for kind in ("unit", "integration", "contract", "e2e"):
            if f"tests/{kind}/" in item.nodeid:
                item.add_marker("integration" if kind == "contract" else kind)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", _env_file=None, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def fake_rag(settings: Settings) -> Iterator[RAG]:
    """The real engine with the hash embedder and the extractive generator."""
    rag = RAG(settings, generator=ExtractiveGenerator(), embedder=HashEmbedder())
    yield rag
    rag.close()


@pytest.fixture(scope="session")
def real_embedder():  # type: ignore[no-untyped-def]
    from ingest.config import EmbeddingConfig
    from ingest.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(EmbeddingConfig())
    embedder.warm_up()
    return embedder


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged SmolLM2 as a plain Hugging Face folder, converted once per test run."""
    from rag.generation.models import smollm2_folder

    return smollm2_folder(tmp_path_factory.mktemp("models"))
