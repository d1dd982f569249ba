"""Where the (model, category) cells run: in the flow's process or on a Dask cluster.

The `cluster` setting (flow parameter, CLI `--cluster`) is one of:
- `none`: in the flow's process, one cell after another (the default);
- `local:N`: a `distributed.LocalCluster` of N worker processes, one thread each;
- `tcp://host:8786`: an existing Dask scheduler, whose workers may sit on many machines;
- `cuda`: `dask_cuda.LocalCUDACluster`, one worker per GPU of this host (extra `gpu`).

Each cell is one unit of work on one worker and one device (`tasks.training.cell`): it
receives names, paths and settings, checks here that its worker sees the dataset and
the run's output folder (a shared filesystem), trains, and names the worker and device.

Example:
    >>> runner = task_runner_for(parse_cluster("local:2"))  # a Prefect task runner
    >>> some_flow.with_options(task_runner=runner)(...)  # its tasks' .submit() go there
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

ClusterKind = Literal["none", "local", "address", "cuda"]
CLUSTER_HELP = "none | local:N | tcp://host:port | cuda"


class ClusterError(ValueError):
    """The `cluster` setting is malformed or cannot be provided on this host."""


class WorkerCannotSeePath(ValueError):
    """A worker does not see a path the flow gave it: the filesystem is not shared."""


@dataclass(frozen=True)
class ClusterSpec:
    kind: ClusterKind
    workers: int | None = None  # local:N
    address: str | None = None  # tcp://host:port

    def describe(self) -> str:
        if self.kind == "local":
            return f"local:{self.workers}"
        return self.address if self.kind == "address" else self.kind

    @property
    def distributed(self) -> bool:
        return self.kind != "none"


def parse_cluster(text: str | None) -> ClusterSpec:
    """`none`, `local:N`, `tcp://host:port` (also tls://) or `cuda`, as a `ClusterSpec`."""
    value = (text or "none").strip()
    if value in ("none", "cuda"):
        return ClusterSpec(kind=value)  # type: ignore[arg-type]
    if value.startswith("local:"):
        count = value.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(f"cluster {value!r}: N in local:N must be a whole number >= 1")
        return ClusterSpec(kind="local", workers=int(count))
    if value.startswith(("tcp://", "tls://")):
        host, _, port = value.split("://", 1)[1].rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(f"cluster {value!r}: expected a scheduler address tcp://host:port")
        return ClusterSpec(kind="address", address=value)
    raise ClusterError(f"unknown cluster {value!r}: use {CLUSTER_HELP}")


def task_runner_for(spec: ClusterSpec) -> TaskRunner:
    """The Prefect task runner that puts cells where `spec` says."""
    if spec.kind == "none":
        # one cell at a time: two trainings in one process would only fight over its cores
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if spec.kind == "address":
        return DaskTaskRunner(address=spec.address)
    if spec.kind == "local":
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": spec.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    return DaskTaskRunner(
        cluster_class="dask_cuda.LocalCUDACluster",
        cluster_kwargs={"n_workers": _gpu_count(), "threads_per_worker": 1},
    )


def _gpu_count() -> int:
    """GPUs dask-cuda would use, counted through NVML so the flow's process never
    initialises CUDA (worker processes are started afterwards and own the GPUs)."""
    try:
        from dask_cuda.utils import get_n_gpus
    except ImportError:
        raise ClusterError(
            "cluster 'cuda' needs dask-cuda (a CUDA host): pip install 'anomaly-benchmark[gpu]'; "
            "on a host without GPUs use --cluster local:N or none"
        ) from None
    try:
        count = get_n_gpus()
    except Exception as err:  # noqa: BLE001 - NVML missing or no driver: same answer
        raise ClusterError(f"cluster 'cuda': no usable GPU found ({err})") from None
    if count < 1:
        raise ClusterError("cluster 'cuda': no GPU visible (CUDA_VISIBLE_DEVICES, driver)")
    return count


# --------------------------------------------------------------------------- the cell


def worker_identity() -> str:
    """The Dask worker's name and address, or host:pid when the flow's process runs it."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"
    return f"{worker.name}@{worker.address}" if worker.name != worker.address else worker.address


def device_identity(device: str) -> str:
    """`cpu`, or e.g. `cuda:0 <GPU name> (CUDA_VISIBLE_DEVICES=3)` on a GPU worker."""
    if not device.startswith("cuda"):
        return device
    import torch

    index = torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0]
    where = f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""
    return f"cuda:{index} {torch.cuda.get_device_name(index)}{where}"


def listing_fingerprint(folder: Path) -> str:
    """sha256 over the relative paths and sizes of every file under `folder`: cheap to
    compute on each worker, and different when a worker sees another copy of the data."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def require_shared_paths(category_dir: Path, data_fingerprint: str, run_root: Path) -> None:
    """Fail at once, naming the worker and the path, when this worker cannot see the
    flow's dataset copy or the run's output folder (created by the flow beforehand)."""
    worker = worker_identity()
    if not category_dir.is_dir():
        raise WorkerCannotSeePath(
            f"worker {worker} cannot see data_root: {category_dir} does not exist there; "
            "every worker needs the dataset at the same path (a shared filesystem)"
        )
    if listing_fingerprint(category_dir) != data_fingerprint:
        raise WorkerCannotSeePath(
            f"worker {worker} sees a different {category_dir} than the flow (other files or "
            "sizes); every worker needs the same dataset copy at that path"
        )
    if not run_root.is_dir():
        raise WorkerCannotSeePath(
            f"worker {worker} cannot see output_dir: {run_root} (created by the flow) does "
            "not exist there; every worker needs output_dir at the same path"
        )
