"""The loss-spike detector (pure logic), its calibration on stored real loss curves, and
rollback recovery on a small real Lightning training run."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.clean_loss_curves import DATA_DIR, read_curve
from tasks.runtime.profiles import SpikeSettings
from tasks.training.loss_spikes import LossSpikeCallback, LossSpikeDetector
from tests.spike_injection import LearningRateBlowUp

CLEAN_CURVES = sorted(DATA_DIR.glob("*.csv.gz"))
TARGET = torch.linspace(-1.0, 1.0, 8)


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


def test_a_lasting_jump_is_confirmed_after_persistence_steps_and_dated_to_its_onset():
    curve = _noisy_decreasing_curve(0)
    curve[150:] *= 30.0
    events = _feed(LossSpikeDetector(SpikeSettings()), curve)
    persistence = SpikeSettings().persistence
    assert [(e.onset_step, e.step) for e in events][:1] == [(150, 150 + persistence - 1)]
    assert events[0].loss_name == "train_loss"
    assert events[0].value == pytest.approx(curve[150])
    assert events[0].magnitude > SpikeSettings().robust_z
    assert events[0].end_reason == "loss_spike"


def test_one_outlier_step_is_turbulence_not_a_spike():
    curve = _noisy_decreasing_curve(0)
    curve[150] *= 30.0
    assert _feed(LossSpikeDetector(SpikeSettings()), curve) == []


def test_a_lasting_moderate_jump_is_confirmed_as_a_level_shift():
    # 3x is under the 10x divergence bar; lasting shift_steps steps, it is a level shift.
    curve = 5.0 * np.exp(np.random.default_rng(1).normal(0, 0.01, 100))
    curve[60:] *= 3.0
    events = _feed(LossSpikeDetector(SpikeSettings()), curve)
    shift_steps = SpikeSettings().shift_steps
    assert [(e.onset_step, e.step, e.reason) for e in events][:1] == [
        (60, 60 + shift_steps - 1, "level_shift")
    ]
    assert events[0].magnitude == pytest.approx(3.0, rel=0.05)


def test_a_short_run_of_moderate_jumps_is_turbulence():
    # Batch-1 EfficientAD losses have runs of 3-5 steps at 3-5x the median.
    curve = 5.0 * np.exp(np.random.default_rng(1).normal(0, 0.01, 100))
    curve[60 : 60 + SpikeSettings().shift_steps - 1] *= 4.0
    assert _feed(LossSpikeDetector(SpikeSettings()), curve) == []


def test_a_level_shift_cannot_raise_its_own_bar():
    # Values over shift_ratio stay out of the window, so a lasting shift is still seen
    # after a window's worth of steps (here by a detector that needs 30 in a row).
    settings = SpikeSettings(window=10, warmup_steps=5, shift_steps=30)
    curve = 5.0 * np.exp(np.random.default_rng(2).normal(0, 0.01, 100))
    curve[40:] *= 3.0
    events = _feed(LossSpikeDetector(settings), curve)
    assert [(e.onset_step, e.step) for e in events][:1] == [(40, 69)]


def test_a_shift_bar_above_the_divergence_bar_is_refused():
    with pytest.raises(ValueError, match="shift_ratio"):
        SpikeSettings(shift_ratio=20.0, ratio=10.0)


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
    detector = LossSpikeDetector(SpikeSettings(window=10, warmup_steps=5, persistence=1))
    values = [1.0] * 12 + [50.0, 1.0, 50.0]
    assert [e.step for e in _feed(detector, values)] == [12, 14]


def test_stored_clean_curves_are_long_real_efficientad_runs():
    assert CLEAN_CURVES, f"no clean loss curve stored in {DATA_DIR}"
    for path in CLEAN_CURVES:
        steps = {step for step, name, _ in read_curve(path) if name == "train_loss"}
        assert len(steps) >= 2000, f"{path.name}: {len(steps)} steps"


def test_no_false_alarm_on_stored_clean_efficientad_curves():
    for path in CLEAN_CURVES:
        detector = LossSpikeDetector(SpikeSettings(), watch=SpikeSettings().watch)
        rows = read_curve(path)
        alarms = [e for step, name, v in rows if (e := detector.update(step, name, v))]
        assert alarms == [], f"{path.name}: {alarms[0].describe()}"


def test_stored_clean_curves_still_catch_a_late_lasting_spike():
    # A lasting 10x shift at every 5th step of the last 10 %: caught within shift_steps
    # steps, and dated no later than the shift (a rollback must restore weights from
    # before it; a natural excursion just before can make the date earlier).
    settings = SpikeSettings()
    for path in CLEAN_CURVES:
        rows = [(s, v) for s, name, v in read_curve(path) if name == "train_loss"]
        for at in range(int(0.9 * len(rows)), len(rows) - settings.shift_steps, 5):
            detector = LossSpikeDetector(settings)
            events = [
                e
                for i, (s, v) in enumerate(rows)
                if (e := detector.update(s, "train_loss", v * (10.0 if i >= at else 1.0)))
            ]
            shift = rows[at][0]
            assert events, f"{path.name}: shift at step {shift} missed"
            first = events[0]
            assert shift - settings.shift_steps < first.onset_step <= shift, (path.name, shift)
            assert first.step < shift + settings.shift_steps, (path.name, shift)


# ---- rollback on a real (small) Lightning training run --------------------------------


class _Regression(LightningModule):
    """A linear model fitted by Adam on a fixed noisy linear target, logging train_loss."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.05)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=10_000),
        }


def _fit(planned: int, callbacks: list, tmp_path: Path) -> tuple[_Regression, Trainer]:
    torch.manual_seed(0)
    x = torch.randn(4096, 8)
    y = x @ TARGET[:, None] + 0.1 * torch.randn(4096, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = _Regression()
    trainer = Trainer(
        max_steps=planned,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(model, loader)
    return model, trainer


def test_a_spike_at_90_percent_is_rolled_back_and_training_finishes_within_1_1x(tmp_path):
    planned = 300
    watcher = LossSpikeCallback(SpikeSettings())
    model, trainer = _fit(planned, [watcher, LearningRateBlowUp(270, factor=300.0)], tmp_path)

    assert watcher.spike is None  # rolled back, no restart needed
    assert len(watcher.recoveries) == 1
    recovery = watcher.recoveries[0]
    assert 270 < recovery.onset_step <= 273
    assert recovery.restored_step <= recovery.onset_step - 2
    assert recovery.learning_rate_after == pytest.approx(0.025)
    assert planned < trainer.global_step <= 1.1 * planned
    # the final weights do not carry the spike: the fit is as good as before it
    weights = model.layer.weight.detach().flatten()
    assert torch.allclose(weights, TARGET, atol=0.1)
    final = [v for s, n, v in watcher.losses if n == "train_loss"][-5:]
    before = [v for s, n, v in watcher.losses if n == "train_loss" and 250 <= s < 270]
    assert max(final) < 3 * max(before)


def test_a_clean_run_neither_rolls_back_nor_stops(tmp_path):
    watcher = LossSpikeCallback(SpikeSettings())
    _, trainer = _fit(300, [watcher], tmp_path)
    assert watcher.recoveries == [] and watcher.spike is None
    assert trainer.global_step == 300


def test_without_a_checkpoint_before_the_spike_training_stops_for_a_restart(tmp_path):
    watcher = LossSpikeCallback(SpikeSettings(checkpoint_every=0))
    _, trainer = _fit(300, [watcher, LearningRateBlowUp(270, factor=300.0)], tmp_path)
    assert watcher.recoveries == []
    assert watcher.spike is not None and trainer.global_step < 300
