"""Holm's step-down correction against hand-worked values and statsmodels."""

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from tasks.stats.multiple import holm_adjust


def test_hand_worked_example():
    # sorted: 0.01 x 4 = 0.04, 0.02 x 3 = 0.06, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> max so far
    adjusted = holm_adjust([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(adjusted, [0.06, 0.04, 0.06, 0.06])


def test_monotone_in_the_raw_order_and_capped_at_one():
    raw = np.array([0.001, 0.2, 0.04, 0.5, 0.011, 0.9])
    adjusted = holm_adjust(raw)
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= raw) and adjusted.max() == 1.0
    # 0.9 x 1 would be 0.9 but the running maximum carries 0.5 x 2 = 1.0
    assert adjusted[5] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0, 0.2, size=rng.integers(1, 30))
    raw[: raw.size // 3] = raw[0]  # ties
    reject, expected, _, _ = multipletests(raw, alpha=0.05, method="holm")
    np.testing.assert_allclose(holm_adjust(raw), expected, atol=1e-15)
    assert np.array_equal(holm_adjust(raw) < 0.05, reject)


def test_edges():
    assert holm_adjust([]).size == 0
    assert holm_adjust([0.2]).tolist() == [0.2]
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        holm_adjust([0.1, float("nan")])
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        holm_adjust([1.2])
