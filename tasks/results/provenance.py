"""Where a run's figures came from: the code version and the host's environment.

Example:
    >>> detect_code_version()  # doctest: +SKIP
    '96de7cb-dirty'
    >>> collect_environment()["cpu"]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from tasks.runtime.hardware import cpu_name
from tasks.runtime.paths import REPO_ROOT


def detect_code_version() -> str:
    """`git describe --always --dirty` of this checkout, else the package version."""
    repo = REPO_ROOT
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return "anomaly-benchmark " + metadata.version("anomaly-benchmark")
    except metadata.PackageNotFoundError:
        return "unknown"


def collect_environment() -> dict[str, Any]:
    """Versions and host facts for the report. Reads package metadata only: importing
    torch here would cost seconds, so torch threads are read only if already loaded."""
    packages = ["torch", "torchvision", "anomalib", "lightning", "timm", "prefect", "duckdb"]
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = bool(torch.cuda.is_available())
    return env
