"""Real anomalib training on tiny MVTec-layout data: rollback, validation, evaluation.

EfficientAD runs are real (offline teacher from tasks.models.efficientad.model, distilled for
a few steps only: teacher quality is beside the point here) and take minutes on 2 CPU
cores, so they are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

import tasks.data.datamodule as datamodules
import tasks.training.coordinator as training
from tasks.results.types import DatasetSpec
from tasks.runtime.profiles import ValidationSettings, load_profile
from tests.cheap_inference import FAST_INFERENCE
from tests.spike_injection import LearningRateBlowUp, NegatedScores

BASE_LR = 1e-4
PLANNED_STEPS = 40
INJECT_AT = 36  # 90 % of the plan


def _spec(root: Path, masks: bool) -> DatasetSpec:
    return DatasetSpec(kind="folder", root=root, categories=("widget",), masks_expected=masks)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One offline-teacher cache for this module's EfficientAD runs."""
    return tmp_path_factory.mktemp("weights")


def _efficientad_profile(weights_dir: Path):
    return load_profile(
        "quick",
        {
            "efficientad": {
                "max_steps": PLANNED_STEPS,
                "teacher_distill_steps": 10,
                "lr": BASE_LR,
            },
            "latency_iters": 3,
            "overlays": 1,
            "weights_dir": str(weights_dir),
            "inference": FAST_INFERENCE,
        },
    )


class _StudentWeights(Callback):
    """The student's weights before each optimizer step from `first` on (test probe)."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if trainer.global_step >= self.first:
            self.by_step[trainer.global_step] = {
                k: v.detach().clone() for k, v in pl_module.model.student.state_dict().items()
            }


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a) ** 0.5)


@pytest.mark.slow
def test_late_spike_is_rolled_back_and_the_run_finishes_near_its_plan(
    make_dataset, weights_dir, tmp_path
):
    root = make_dataset(n_train=8, n_test_good=2, defects={"scratch": 2})
    profile = _efficientad_profile(weights_dir)
    probe = _StudentWeights(first=INJECT_AT - 10)
    fractions: list[float] = []

    result = training.train_and_evaluate(
        "efficientad",
        "widget",
        _spec(root, True),
        profile,
        tmp_path / "run",
        progress=lambda fraction, message: fractions.append(fraction),
        callbacks=[LearningRateBlowUp(INJECT_AT), probe],
    )

    # caught and rolled back, no fresh restart
    assert len(result.attempts) == 1
    attempt = result.attempts[0]
    assert attempt.end_reason == "completed" and attempt.chosen
    assert len(attempt.recoveries) == 1
    recovery = attempt.recoveries[0]
    # The blown-up learning rate acts from step INJECT_AT; its loss shows one step later,
    # and `persistence` divergent steps confirm it. The spike is dated to the start of its
    # flagged run: an ordinary excursion just before the blow-up can date it earlier.
    spike = profile.spike
    assert INJECT_AT - spike.shift_steps < recovery.onset_step <= INJECT_AT + 2
    assert recovery.spike_step <= INJECT_AT + 1 + spike.persistence
    assert recovery.reason == "divergence"
    assert recovery.restored_step <= recovery.onset_step - 2
    assert recovery.learning_rate_after == pytest.approx(recovery.learning_rate_before * 0.5)
    # finishes the plan, within 1.1x of it
    assert PLANNED_STEPS <= attempt.steps <= 1.1 * PLANNED_STEPS

    # The final weights do not carry the spike: they sit near the restored checkpoint,
    # far from the blown-up weights.
    final = {
        k: v.detach().cpu()
        for k, v in torch.load(result.artifacts["checkpoint"], weights_only=False)[
            "state_dict"
        ].items()
        if k.startswith("model.student.")
    }
    final = {k.removeprefix("model.student."): v for k, v in final.items()}
    restored = probe.by_step[recovery.restored_step]
    # the probe reads weights before each step: the last blown-up ones before the rollback
    spiked = probe.by_step[recovery.spike_step - 1]
    assert _distance(final, restored) < 0.2 * _distance(spiked, restored)

    # The loss after the rollback is back at its pre-spike level.
    losses = dict((step, v) for step, name, v in attempt.losses if name == "train_loss")
    before = [losses[s] for s in range(INJECT_AT - 8, INJECT_AT)]
    assert losses[attempt.steps] < 3 * max(before)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [s.stage for s in result.stages] == ["export", "latency"]


@pytest.mark.slow
def test_clean_efficientad_run_neither_rolls_back_nor_restarts(make_dataset, weights_dir, tmp_path):
    root = make_dataset(n_train=8, n_test_good=2, defects={"scratch": 2})
    profile = _efficientad_profile(weights_dir)

    result = training.train_and_evaluate(
        "efficientad", "widget", _spec(root, True), profile, tmp_path / "run"
    )

    assert [(a.end_reason, a.chosen, a.retry_reason) for a in result.attempts] == [
        ("completed", True, None)
    ]
    attempt = result.attempts[0]
    assert attempt.recoveries == [] and attempt.spike_step is None
    assert attempt.steps == PLANNED_STEPS
    assert attempt.learning_rate == pytest.approx(BASE_LR)
    names = {name for _, name, _ in attempt.losses}
    assert {"train_st", "train_ae", "train_stae", "train_loss"} <= names
    # 2 held-out images, each kept and painted 3 times: 2 x 6 pairs
    assert attempt.validation_pairs == 12
    assert attempt.validation_low <= attempt.validation_metric <= attempt.validation_high
    assert len(result.scores) == 4  # the complete test split: 2 good + 2 scratch


def _patchcore_profile(weights_dir: Path, **overrides):
    return load_profile(
        "quick",
        {
            "patchcore": {"image_size": 64},
            "latency_iters": 3,
            "overlays": 1,
            "weights_dir": str(weights_dir),
            "inference": FAST_INFERENCE,
            **overrides,
        },
    )


def test_patchcore_without_masks_has_image_metrics_and_no_pixel_metrics(
    make_dataset, weights_dir, tmp_path
):
    root = make_dataset(n_train=8, n_test_good=3, defects={"scratch": 2, "hole": 2}, masks=False)

    result = training.train_and_evaluate(
        "patchcore", "widget", _spec(root, False), _patchcore_profile(weights_dir), tmp_path / "run"
    )

    # a bright square on noise: every defect outscores every good image
    assert result.metrics["image_auroc"] == 1.0
    assert result.metrics["image_f1_method"]
    assert (result.metrics["pixel_auroc"], result.metrics["pixel_f1"]) == (None, None)
    assert result.metrics["aupro"] is None
    assert len(result.attempts) == 1 and result.attempts[0].chosen
    assert result.attempts[0].end_reason == "completed"
    # Every test image is scored: validation came from train, not from test.
    assert (
        sorted((s["defect_type"], s["label"]) for s in result.scores)
        == [("good", 0)] * 3 + [("hole", 1)] * 2 + [("scratch", 1)] * 2
    )
    assert {level for level, _, _ in result.roc_points} == {"image"}
    assert len(result.roc_points) <= 100
    assert Path(result.artifacts["checkpoint"]).is_file()
    assert Path(result.artifacts["overlay_best_0"]).is_file()
    assert result.weights["source"] in ("pretrained", "fallback")
    assert [(s.stage, s.status) for s in result.stages] == [
        ("export", "completed"),
        ("latency", "completed"),
    ]
    assert Path(result.artifacts["torch"]).is_file()
    # the cell's inference paths: torch fp32 scored the whole test split, timed image by image
    (fp32,) = result.latency
    assert (fp32.path, fp32.status, fp32.auroc_delta) == ("torch-fp32", "ok", 0.0)
    assert fp32.timed_runs >= len(result.scores) and fp32.p50_ms > 0


def test_patchcore_with_masks_reports_pixel_metrics_and_a_validation_interval(
    make_dataset, weights_dir, tmp_path
):
    root = make_dataset(n_train=8, n_test_good=2, defects={"scratch": 3})

    result = training.train_and_evaluate(
        "patchcore", "widget", _spec(root, True), _patchcore_profile(weights_dir), tmp_path / "run"
    )

    assert result.metrics["image_auroc"] == 1.0
    assert result.metrics["pixel_auroc"] > 0.9
    assert result.metrics["aupro"] > 0.5
    assert 0.0 < result.metrics["pixel_f1"] <= 1.0
    assert {level for level, _, _ in result.roc_points} == {"image", "pixel"}
    assert len(result.scores) == 5
    attempt = result.attempts[0]
    assert attempt.validation_pairs == 2 * 6  # 2 held-out images, each painted 3 times
    assert attempt.validation_metric > 0.5  # PatchCore sees painted anomalies on noise
    assert attempt.validation_low < attempt.validation_metric <= attempt.validation_high


def test_negated_scores_are_caught_as_a_broken_model(make_dataset, weights_dir, tmp_path):
    root = make_dataset(n_train=12, n_test_good=2, defects={"scratch": 2})
    profile = _patchcore_profile(weights_dir, validation={"split_ratio": 0.5})

    result = training.train_and_evaluate(
        "patchcore",
        "widget",
        _spec(root, True),
        profile,
        tmp_path / "run",
        callbacks=[NegatedScores()],
    )

    attempt = result.attempts[0]
    assert attempt.end_reason == "implausible_validation"
    assert attempt.validation_high < 0.5
    assert any("broken" in note for note in result.notes)
    assert result.metrics["image_auroc"] == 0.0  # the test scores are negated too


def test_validation_can_come_from_a_named_folder(make_dataset, weights_dir, tmp_path):
    root = make_dataset(n_train=6, n_test_good=2, defects={"scratch": 2})
    validation = make_dataset(n_train=1, n_test_good=2, defects={"scratch": 2}) / "widget" / "test"
    profile = _patchcore_profile(weights_dir).model_copy(
        update={"validation": ValidationSettings(directory=str(validation))}
    )

    result = training.train_and_evaluate(
        "patchcore", "widget", _spec(root, True), profile, tmp_path / "run"
    )

    attempt = result.attempts[0]
    assert attempt.validation_metric == 1.0  # bright squares: trivially separable
    assert attempt.validation_pairs == 4
    assert result.settings["validation"]["directory"] == str(validation)
    assert len(result.scores) == 4


def test_int8_calibration_anomalies_are_the_painted_validation_images(
    make_dataset, weights_dir, tmp_path
):
    root = make_dataset(n_train=8, n_test_good=2, defects={"scratch": 3})
    datamodule, _, _ = datamodules.make_datamodule(
        _spec(root, True), "widget", _patchcore_profile(weights_dir), 1, work_dir=tmp_path
    )
    datamodule.setup()

    anomalies = datamodules.validation_anomalies(datamodule)

    assert len(anomalies) == 2 * 3  # 2 held-out training images, each painted 3 times
    assert all(p.parent == tmp_path / "validation" and p.is_file() for p in anomalies)
    assert not {p.resolve() for p in anomalies} & {
        p.resolve() for p in (root / "widget" / "test").rglob("*.png")
    }


def test_unknown_model_is_refused(tiny_spec, tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        training.train_and_evaluate("padim", "widget", tiny_spec, load_profile("quick"), tmp_path)


def _hot_share_inside_mask(overlay_path: Path, image_path: Path, mask_path: Path) -> float:
    """Share of the overlay's reddest 2 % of pixels (the hottest region) inside the
    true defect's mask, widened by 4 px."""
    import numpy as np
    from PIL import Image, ImageFilter

    overlay = np.asarray(Image.open(overlay_path).convert("RGB"), dtype=np.float32)
    h, w = overlay.shape[:2]
    base = np.asarray(Image.open(image_path).convert("RGB").resize((w, h)), dtype=np.float32)
    red_added = overlay[..., 0] - base[..., 0]
    hot = red_added >= np.percentile(red_added, 98)
    mask = Image.open(mask_path).convert("L").resize((w, h)).filter(ImageFilter.MaxFilter(9))
    return float((hot & (np.asarray(mask) > 127)).sum() / hot.sum())


@pytest.mark.slow
def test_best_overlay_lights_up_the_defect_on_a_demo_category(demo_root, weights_dir, tmp_path):
    spec = DatasetSpec(kind="demo", root=demo_root, categories=("demo_grass",))
    profile = _patchcore_profile(weights_dir, patchcore={"image_size": 128})

    result = training.train_and_evaluate("patchcore", "demo_grass", spec, profile, tmp_path / "r")

    best = Path(result.artifacts["overlay_best_0"])  # the highest-scored defective image
    top = max((s for s in result.scores if s["label"] == 1), key=lambda s: s["score"])
    source = Path(top["path"])
    mask = (
        demo_root / "demo_grass" / "ground_truth" / source.parent.name / f"{source.stem}_mask.png"
    )
    assert _hot_share_inside_mask(best, source, mask) > 0.5
