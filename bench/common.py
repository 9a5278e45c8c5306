"""What the benchmarks share: where the data sets and the results are, and the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"  # the public sets, beside the checkout
RESULTS = ROOT / "bench" / "results"


def machine() -> str:
    """CPU count and platform, and the GPU when torch sees one."""
    text = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    try:
        import torch
    except ImportError:
        return text
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return text
