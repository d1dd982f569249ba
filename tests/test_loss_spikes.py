"""Unit tests of the loss-spike detector (pure logic, no training)."""

import math

import numpy as np
import pytest

from tasks.loss_spikes import LossSpikeDetector
from tasks.profiles import SpikeSettings


def _noisy_decreasing_curve(seed: int, steps: int = 300) -> np.ndarray:
    """Exponential decay towards a floor with 15% multiplicative noise, like a batch-1 loss."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    return (0.2 + 10.0 * np.exp(-t / 60)) * np.exp(rng.normal(0.0, 0.15, steps))


def _feed(detector: LossSpikeDetector, values, name: str = "train_loss"):
    return [e for step, v in enumerate(values) if (e := detector.update(step, name, v))]


@pytest.mark.parametrize("seed", range(5))
def test_clean_noisy_decreasing_curve_raises_no_event(seed):
    assert _feed(LossSpikeDetector(SpikeSettings()), _noisy_decreasing_curve(seed)) == []


def test_jump_is_flagged_at_the_step_it_happens():
    curve = _noisy_decreasing_curve(0)
    curve[150] *= 30.0
    events = _feed(LossSpikeDetector(SpikeSettings()), curve)
    assert [e.step for e in events] == [150]
    assert events[0].loss_name == "train_loss"
    assert events[0].value == pytest.approx(curve[150])
    assert events[0].magnitude > SpikeSettings().robust_z
    assert events[0].end_reason == "loss_spike"


def test_moderate_jump_on_a_smooth_curve_is_caught_by_the_robust_z_score():
    # 3x is under the 10x ratio rule, but far outside a curve with 1% noise.
    curve = 5.0 * np.exp(np.random.default_rng(1).normal(0, 0.01, 100))
    curve[60] *= 3.0
    events = _feed(LossSpikeDetector(SpikeSettings()), curve)
    assert [(e.step, e.reason) for e in events] == [(60, "robust_z")]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_is_flagged_immediately_even_during_warmup(bad):
    detector = LossSpikeDetector(SpikeSettings(warmup_steps=10))
    assert detector.update(0, "train_st", 1.0) is None
    event = detector.update(1, "train_st", bad)
    assert event is not None and event.step == 1 and event.reason == "non_finite"
    assert event.end_reason == "non_finite_loss"


def test_no_spike_is_judged_before_warmup():
    detector = LossSpikeDetector(SpikeSettings(warmup_steps=10))
    assert _feed(detector, [1.0, 1.0, 100.0]) == []


def test_unwatched_losses_are_only_checked_for_non_finite_values():
    detector = LossSpikeDetector(SpikeSettings(watch=("train_loss",)))
    assert _feed(detector, [0.001] * 20 + [1.0], name="train_stae") == []
    assert detector.update(21, "train_stae", math.nan) is not None


def test_a_spike_does_not_raise_the_bar_for_the_next_one():
    detector = LossSpikeDetector(SpikeSettings(window=10, warmup_steps=5))
    values = [1.0] * 12 + [50.0, 1.0, 50.0]
    assert [e.step for e in _feed(detector, values)] == [12, 14]
