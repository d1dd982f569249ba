"""Holm's step-down correction of p-values for several comparisons at once.

Holm (1979), "A simple sequentially rejective multiple test procedure", Scandinavian
Journal of Statistics 6(2). It controls the family-wise error rate like Bonferroni's
correction, and rejects at least as often. Used across the paired model comparisons of one
run (every category, every pair of models).

Example:
    >>> holm_adjust([0.01, 0.04, 0.03]).tolist()
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def holm_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values, in the input's order.

    Sorted ascending, the i-th of m (from 1) becomes the running maximum of
    min(1, (m - i + 1) p_(i)); so the adjusted values keep the raw ones' order and a
    comparison is significant at alpha exactly when Holm's procedure rejects it."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values must be a flat sequence, got shape {p.shape}")
    if p.size and (np.isnan(p).any() or (p < 0).any() or (p > 1).any()):
        raise ValueError("p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted
