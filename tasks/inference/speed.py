"""Inference latency and throughput of a trained anomalib model, decode included.

What is timed is what a deployment does per image: read the PNG bytes from disk, decode,
resize, normalise (the model's own pre-processor), then the model's torch module forward,
which includes its anomaly-map and image-score computation. Not timed: Lightning,
post-processing to labels, visualisation (so this is not `Engine.predict`).

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` during the timed runs. On CPU a
background thread samples the process's resident set size (/proc/self/statm) every
20 ms (rarely, so it does not steal time slices from torch's worker threads); the figure
is the peak minus the resident size just before timing, i.e. the extra memory inference
needed on top of the loaded model.

Example:
    >>> results = measure_latency(model, paths, image_size=256, batch_size=8, iters=20)
    >>> results[0].p50_ms, results[0].throughput_ips
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from anomalib.models.components import AnomalibModule
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from tasks.data.resize import model_resize
from tasks.results.types import LatencyResult
from tasks.runtime.hardware import device_name

logger = logging.getLogger(__name__)

WARMUP_ITERS = 3
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def load_image(path: Path, image_size: int, model: AnomalibModule) -> torch.Tensor:
    """PNG/JPEG on disk -> the model's input tensor (1, 3, H, W): decode, resize, normalise."""
    image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    image = TF.to_dtype(image, torch.float32, scale=True)[None]
    image = model_resize(image_size)(image)  # the pre-processor's own resize is then a no-op
    if model.pre_processor is not None and hasattr(model.pre_processor, "transform"):
        image = model.pre_processor.transform(image)
    return image


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


class _PeakMemory:
    """Peak extra memory in MB over a block: CUDA allocator peak, or sampled CPU RSS."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mb = max(0, peak - self._base) / 2**20


@contextlib.contextmanager
def _precision(precision: str, device: str) -> Iterator[None]:
    if precision == "fp32":
        yield
    elif precision == "bf16":
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            yield
    else:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_latency(
    model: AnomalibModule,
    image_paths: Sequence[Path],
    image_size: int,
    batch_size: int,
    iters: int,
    precision: str = "fp32",
    device: str = "cpu",
) -> list[LatencyResult]:
    """Batch-1 latency (p50, p95) and throughput at `batch_size`, decode included.

    Images are taken round-robin from `image_paths`; `WARMUP_ITERS` untimed runs of each
    shape come first. Returns one `LatencyResult` (path "torch").
    """
    if not image_paths:
        raise ValueError("measure_latency needs at least one image path")
    paths = [Path(p) for p in image_paths]
    module = model.model.to(device).eval()
    model.to(device)

    def run(batch_paths: Sequence[Path]) -> None:
        batch = torch.cat([load_image(p, image_size, model) for p in batch_paths]).to(device)
        with torch.inference_mode(), _precision(precision, device):
            module(batch)
        _sync(device)

    def paths_at(step: int, count: int) -> list[Path]:
        return [paths[(step * count + i) % len(paths)] for i in range(count)]

    for step in range(WARMUP_ITERS):
        run(paths_at(step, 1))
        run(paths_at(step, batch_size))

    with _PeakMemory(device) as memory:
        single_ms = []
        for step in range(iters):
            start = time.perf_counter()
            run(paths_at(step, 1))
            single_ms.append((time.perf_counter() - start) * 1000)
        batches = max(1, iters // batch_size)
        start = time.perf_counter()
        for step in range(batches):
            run(paths_at(step, batch_size))
        batch_seconds = time.perf_counter() - start

    cuts = statistics.quantiles(single_ms, n=20, method="inclusive")
    result = LatencyResult(
        p50_ms=statistics.median(single_ms),
        p95_ms=cuts[18],
        throughput_ips=batches * batch_size / batch_seconds,
        batch_size=batch_size,
        device=device,
        threads=torch.get_num_threads(),
        peak_memory_mb=memory.peak_mb,
        precision=precision,
        path="torch",
        hardware=device_name(device),
    )
    logger.info(
        "latency %s %s: p50 %.1f ms, p95 %.1f ms, %.1f img/s at batch %d, +%.0f MB",
        type(model).__name__,
        precision,
        result.p50_ms,
        result.p95_ms,
        result.throughput_ips,
        batch_size,
        result.peak_memory_mb,
    )
    return [result]
