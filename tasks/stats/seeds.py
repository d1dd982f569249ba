"""A metric across training seeds: mean and sample standard deviation.

Bouthillier et al. (2021), "Accounting for variance in machine learning benchmarks",
MLSys: a single seed hides the spread that makes two models' figures overlap, so every
figure repeated over seeds is shown with its spread, and the number of seeds behind it.

Example:
    >>> str(summarise_seeds([0.95, 0.97]))
    '0.960 ± 0.014 (2 seeds)'
    >>> str(summarise_seeds([0.95]))
    '0.950 (1 seed, no spread)'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (n - 1) of one metric over `n` seeds; `sd` is
    None for a single seed, where no spread can be estimated (never shown as ± 0)."""

    mean: float
    sd: float | None
    n: int

    def format(self, digits: int = 3) -> str:
        if self.sd is None:
            return f"{self.mean:.{digits}f} (1 seed, no spread)"
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f} ({self.n} seeds)"

    def __str__(self) -> str:
        return self.format()


def summarise_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean ± sample standard deviation of a metric's values, one per seed.

    A seed without the metric is left out by the caller (and the count says so); a
    non-finite value is an error, not a number to average."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("needs one value per seed, at least one")
    if not np.isfinite(array).all():
        raise ValueError(f"{int((~np.isfinite(array)).sum())} of the seeds' values are not finite")
    sd = float(np.std(array, ddof=1)) if array.size > 1 else None
    return SeedSummary(float(array.mean()), sd, int(array.size))
