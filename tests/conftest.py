from __future__ import annotations

import json
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

    # On CPU in float32 wherever the suite runs: tests compare its vectors with the model's own
    # encode to 1e-5, which neither a GPU's float16 (tests/integration/test_gpu.py covers the
    # GPU) nor bfloat16, auto's choice on CPUs that compute it, meets (bfloat16 has its own
    # tests in test_embedding_backends.py).
    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu", precision="float32"))
    embedder.warm_up()
    return embedder


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged SmolLM2 as a plain Hugging Face folder, converted once per test run."""
    from rag.generation.models import smollm2_folder

    return smollm2_folder(tmp_path_factory.mktemp("models"))


@pytest.fixture
def mini_dataset(tmp_path: Path) -> Path:
    """A three-passage dataset in the ../shared/data layout (one unanswerable question)."""
    folder = tmp_path / "mini"
    folder.mkdir()
    passages = [
        {"id": "p1", "title": "Observatory", "text": "An adult ticket costs 12 euros."},
        {"id": "p2", "title": "Tea", "text": "西湖龙井产于浙江省杭州市，是绿茶。"},
        {"id": "p3", "title": "Returns", "text": "Refunds are possible within 30 days."},
    ]
    questions = [
        {"id": "q1", "question": "How much is an adult ticket?", "gold_passage_ids": ["p1"],
         "answers": ["12 euros"]},
        {"id": "q2", "question": "西湖龙井产于哪里？", "gold_passage_ids": ["p2"],
         "answers": ["浙江省杭州市"]},
        {"id": "q3", "question": "Within how many days are refunds possible?",
         "gold_passage_ids": ["p3"], "answers": ["30 days"]},
        {"id": "q4", "question": "Who built the pyramids?", "gold_passage_ids": [],
         "answers": [], "is_impossible": True},
    ]
    (folder / "passages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return folder
