"""GPU tests: run where a CUDA (or ROCm/DCU) GPU and the GPU builds are present; skipped
elsewhere with the reason. Run them on a GPU machine with ``pytest -m gpu``."""

from __future__ import annotations

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
