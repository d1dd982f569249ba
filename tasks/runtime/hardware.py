"""What a figure was measured on: the CPU's name and the features that decide which
inference paths are fast, or the GPU's name.

A latency figure depends on the hardware as much as on the model: which of int8 and
fp32 is the faster path turns on the CPU's int8 dot-product units (docs/performance.md).
So every latency row records `device_name(device)`, and a run's environment records the
CPU of the host that ran the flow.

Example:
    >>> device_name("cpu")  # doctest: +SKIP
    'Example CPU 9000, 2 cpus, AVX2'
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# /proc/cpuinfo flags that decide whether the int8 and bf16 paths are fast
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# ... and how `device_name` shows them
FAST_PATH_FLAGS = {
    "avx512_vnni": "VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "BF16",
    "amx_bf16": "AMX",
}


def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    return set(_cpuinfo().split())


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    return bool(cpu_flags() & BF16_FLAGS)


def cpu_has_int8_dot_products() -> bool:
    """True when the CPU has int8 dot-product instructions (VNNI or AMX)."""
    return bool(cpu_flags() & INT8_DOT_PRODUCT_FLAGS)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def device_name(device: str) -> str:
    """`device` ("cpu", "cuda", "cuda:1") as a person would name it: the GPU's name, or
    the CPU's name, how many CPUs this process may use and the instruction sets torch's
    kernels use (AVX2, AVX512) plus the int8/bf16 units present."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    flags = cpu_flags()
    units = [label for flag, label in FAST_PATH_FLAGS.items() if flag in flags]
    features = " ".join([torch.backends.cpu.get_cpu_capability(), *units])
    return f"{cpu_name()}, {cpu_count()} cpus, {features}"
