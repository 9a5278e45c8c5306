"""What the benchmarks share: where the data sets and the results are, and the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"  # the public sets, beside the checkout
RESULTS = ROOT / "bench" / "results"


def pct(values: list[float], q: float, digits: int = 2) -> float:
    """The ``q`` quantile of ``values`` (the value at that rank), rounded."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], digits)


def warm_ingest(rag: Any, paths: list[Path]) -> None:
    """An untimed first ingestion of 50 of ``paths``, into a knowledge base deleted after:
    the first one in a process pays for imports, query compilation and, on a GPU, the first
    kernels (small beside 25 s of encoding on 2 CPU cores, not beside 1.3 s on a GPU). The
    segmenter's dictionary is loaded before it, since those 50 may hold no Chinese."""
    from stores import tokens

    tokens.warm_up()
    rag.create_kb("warm-up")
    rag.ingest(paths[:50], kb="warm-up")
    rag.delete_kb("warm-up")


# The processor's matrix and vector units that change which backend and precision run
# fastest (on a Xeon with AMX, torch in bfloat16 beat onnxruntime's int8; on an EPYC
# without it, the other way round).
_UNITS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's name and its units of ``_UNITS``, from ``cpuinfo`` (Linux); else the
    platform's processor string, which may be empty."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), platform.processor())
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines()
                  if line.startswith("flags")), set())
    units = [u for u in _UNITS if u in flags]
    return f"{name} ({', '.join(units)})" if units else name


def machine() -> str:
    """The processor, CPU count and platform, and the GPU when torch sees one."""
    model = cpu_model()
    text = (f"{model + ', ' if model else ''}{platform.machine()}, {os.cpu_count()} CPUs, "
            f"{platform.platform()}")
    try:
        import torch
    except ImportError:
        return text
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return text
