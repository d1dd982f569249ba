"""The one latency timer: how every inference path is timed, decode included.

`time_path` times a path the way a deployment runs it: image file on disk -> decode ->
resize -> model -> score, at batch 1, after warm-up; the pass over the complete test
split is itself timed image by image, so it doubles as timed runs; then throughput at a
stated batch. The benchmark scripts time with it too (`benchmarks/latency.py`).

Example:
    >>> timing = time_path(built, test_paths, profile.inference, complete_test_pass=True)
    >>> statistics.median(timing.single_ms), p95(timing.single_ms), timing.throughput_ips
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.inference.path_types import BuiltPath
from tasks.runtime.profiles import InferenceSettings


@dataclass
class PathTiming:
    """Timed batch-1 runs and the scores of the test pass (None past the time cap)."""

    single_ms: list[float]
    scores: np.ndarray | None
    warmup_runs: int
    throughput_ips: float
    throughput_batch: int


def time_path(
    built: BuiltPath,
    test_paths: Sequence[Path],
    settings: InferenceSettings,
    complete_test_pass: bool = False,
) -> PathTiming:
    """Warm up, score every test image at batch 1 (each one timed, decode included), add
    timed runs up to `settings.timed_runs`, then measure throughput at the stated batch.

    `settings.max_seconds_per_path` (`anomalib_max_seconds` for anomalib's own paths,
    when set) caps the timed work: a slow path stops adding runs
    once it is spent, and when even the test pass does not fit its scores are dropped
    (no AUROC is better than an AUROC on part of the test split), unless
    `complete_test_pass`."""
    paths = [Path(p) for p in test_paths]
    cap = settings.max_seconds_per_path
    if built.name.startswith("anomalib-") and settings.anomalib_max_seconds is not None:
        cap = settings.anomalib_max_seconds
    warmup_runs, start = 0, time.perf_counter()
    while warmup_runs < settings.warmup_runs and (
        warmup_runs == 0 or time.perf_counter() - start < settings.warmup_seconds
    ):
        built.score_files([paths[warmup_runs % len(paths)]])
        warmup_runs += 1
    single_ms: list[float] = []
    scores: list[float] = []
    began = time.perf_counter()

    def spent() -> float:
        return time.perf_counter() - began

    for path in paths:
        if not complete_test_pass and spent() > cap and len(single_ms) >= settings.min_timed_runs:
            break
        t0 = time.perf_counter()
        scores.append(float(built.score_files([path])[0]))
        single_ms.append((time.perf_counter() - t0) * 1000)
    complete = len(scores) == len(paths)
    index = 0
    while len(single_ms) < settings.timed_runs and spent() < cap:
        t0 = time.perf_counter()
        built.score_files([paths[index % len(paths)]])
        single_ms.append((time.perf_counter() - t0) * 1000)
        index += 1
    batch = settings.throughput_batch if built.batchable else 1
    if batch == 1:
        throughput = 1000 * len(single_ms) / sum(single_ms)
    else:
        rounds = max(1, min(settings.throughput_rounds, len(paths) // batch or 1))
        built.score_files(paths[:batch])  # untimed: the first run at a new shape compiles
        t0 = time.perf_counter()
        for r in range(rounds):
            built.score_files([paths[(r * batch + i) % len(paths)] for i in range(batch)])
        throughput = rounds * batch / (time.perf_counter() - t0)
    return PathTiming(
        single_ms=single_ms,
        scores=np.array(scores) if complete else None,
        warmup_runs=warmup_runs,
        throughput_ips=throughput,
        throughput_batch=batch,
    )


def p95(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]
