"""What latency rows say they were measured on (tasks.runtime.hardware), from /proc/cpuinfo."""

from __future__ import annotations

import pytest
import torch

import tasks.runtime.hardware as hardware

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse4_2 avx avx2 fma
"""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def use(text: str | None):
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(hardware, "CPUINFO", path)

    return use


def test_a_cpu_is_named_with_its_cpus_kernels_and_fast_units(cpuinfo, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    cpuinfo(XEON)
    assert hardware.device_name("cpu") == (
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz, 2 cpus, AVX512 VNNI BF16 AMX"
    )
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    cpuinfo(EPYC)
    assert hardware.device_name("cpu") == "AMD EPYC, 2 cpus, AVX2"
    assert {"avx2", "fma"} <= hardware.cpu_flags() and "amx_int8" not in hardware.cpu_flags()


def test_without_cpuinfo_the_platform_names_the_cpu(cpuinfo, monkeypatch):
    cpuinfo(None)  # not readable, as on macOS
    monkeypatch.setattr(hardware.platform, "processor", lambda: "arm")
    assert hardware.cpu_name() == "arm"
    assert hardware.cpu_flags() == set()
    assert hardware.device_name("cpu").startswith("arm, ")


def test_the_cpu_count_is_what_this_process_may_use(monkeypatch):
    # a worker pinned to 2 of the host's 64 CPUs runs its paths on 2
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {5, 9}, raising=False)
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 64)
    assert hardware.cpu_count() == 2
    monkeypatch.delattr(hardware.os, "sched_getaffinity")  # as on macOS
    assert hardware.cpu_count() == 64
