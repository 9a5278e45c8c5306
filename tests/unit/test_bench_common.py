"""The machine line every benchmark records: the processor's name and the units that decide
which embedding backend and precision run fastest."""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import cpu_model, machine

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_the_cpu_model_names_the_processor_and_its_units(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    assert cpu_model(info) == ("Intel(R) Xeon(R) Processor "
                               "(amx_bf16, amx_int8, avx512_bf16, avx512_vnni, avx512f, avx2)")
    info.write_text("model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
    assert cpu_model(info) == "AMD EPYC 7B13 (avx2)"


def test_the_machine_line_starts_with_this_processor() -> None:
    line = machine()
    assert f"{os.cpu_count()} CPUs" in line
    model = cpu_model()
    if model:
        assert line.startswith(model + ", ")
