"""Real anomalib training on tiny MVTec-layout data: spikes, retraining, evaluation.

EfficientAD runs are real (offline teacher from tasks.efficientad_offline, distilled for
a few steps only: teacher quality is beside the point here) and take minutes on 2 CPU
cores, so they are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tasks.training as training
from tasks.profiles import ValidationSettings, load_profile
from tasks.results import DatasetSpec

BASE_LR = 1e-4
INJECT_AT = 12
# Inference paths are tested in tests/test_inference.py; here one cheap path suffices.
FAST_INFERENCE = {"paths": ["torch-fp32"], "timed_runs": 3, "min_timed_runs": 1, "warmup_runs": 1}


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
            "efficientad": {"max_steps": 16, "teacher_distill_steps": 10, "lr": BASE_LR},
            "spike": {"warmup_steps": 8},
            # A 16-step model on 2 validation images may well score under 0.5: this module
            # tests spikes, so no retraining for validation here.
            "validation": {"min_image_auroc": 0.0},
            "latency_iters": 3,
            "overlays": 1,
            "weights_dir": str(weights_dir),
            "inference": FAST_INFERENCE,
        },
    )


@pytest.fixture
def built_models(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every model train_and_evaluate builds, in attempt order (their final weights)."""
    built: list = []
    real_build = training.build_model

    def spy(model_name, settings, cache_dir):
        model, provenance = real_build(model_name, settings, cache_dir)
        built.append(model)
        return model, provenance

    monkeypatch.setattr(training, "build_model", spy)
    return built


def _student_and_ae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(("model.student.", "model.ae."))}


@pytest.mark.slow
def test_injected_spike_is_detected_and_its_weights_are_not_kept(
    make_dataset, weights_dir, built_models, tmp_path
):
    root = make_dataset(n_train=8, n_test_good=2, defects={"scratch": 2})
    profile = _efficientad_profile(weights_dir)
    fractions: list[float] = []

    result = training.train_and_evaluate(
        "efficientad",
        "widget",
        _spec(root, True),
        profile,
        tmp_path / "run",
        progress=lambda fraction, message: fractions.append(fraction),
        inject_spike_at=INJECT_AT,
    )

    spiked, retry = result.attempts[0], result.attempts[1]
    assert spiked.end_reason == "loss_spike"
    # The blown-up learning rate acts from step INJECT_AT; its loss shows one step later.
    assert INJECT_AT < spiked.spike_step <= INJECT_AT + 3
    assert spiked.steps < profile.efficientad.max_steps
    assert spiked.retry_reason and not spiked.chosen
    assert retry.end_reason == "completed" and retry.chosen
    assert retry.learning_rate == pytest.approx(BASE_LR * profile.retry_lr_factor)
    assert retry.seed != spiked.seed
    assert retry.steps == profile.efficientad.max_steps
    assert [a.attempt for a in result.attempts if a.chosen] == [2]

    # The kept checkpoint holds the retry's weights, not the spiked attempt's.
    kept = _student_and_ae(
        torch.load(result.artifacts["checkpoint"], weights_only=False)["state_dict"]
    )
    spiked_state = _student_and_ae(built_models[0].state_dict())
    retry_state = _student_and_ae(built_models[1].state_dict())
    assert kept and all(torch.equal(kept[k], retry_state[k].cpu()) for k in kept)
    assert any(not torch.equal(kept[k], spiked_state[k].cpu()) for k in kept)

    # The kept attempt's loss stays sane: its last loss is not above its warmup losses.
    losses = [v for _, name, v in retry.losses if name == "train_loss"]
    assert len(losses) == profile.efficientad.max_steps
    assert max(losses[-3:]) < 3 * max(losses[:8])

    assert 0.0 <= result.metrics["image_auroc"] <= 1.0
    assert result.metrics["pixel_auroc"] is not None
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.slow
def test_clean_efficientad_run_trains_once(make_dataset, weights_dir, tmp_path):
    root = make_dataset(n_train=8, n_test_good=2, defects={"scratch": 2})
    profile = _efficientad_profile(weights_dir)

    result = training.train_and_evaluate(
        "efficientad", "widget", _spec(root, True), profile, tmp_path / "run"
    )

    assert [(a.end_reason, a.chosen, a.retry_reason) for a in result.attempts] == [
        ("completed", True, None)
    ]
    assert result.attempts[0].spike_step is None
    assert result.attempts[0].learning_rate == pytest.approx(BASE_LR)
    names = {name for _, name, _ in result.attempts[0].losses}
    assert {"train_st", "train_ae", "train_stae", "train_loss"} <= names
    assert len(result.scores) == 4  # the complete test split: 2 good + 2 scratch


def _patchcore_profile(weights_dir: Path):
    return load_profile(
        "quick",
        {
            "patchcore": {"image_size": 64},
            "latency_iters": 3,
            "overlays": 1,
            "weights_dir": str(weights_dir),
            "inference": FAST_INFERENCE,
        },
    )


def test_patchcore_without_masks_has_image_metrics_and_no_pixel_metrics(
    make_dataset, weights_dir, tmp_path
):
    root = make_dataset(n_train=8, n_test_good=3, defects={"scratch": 2, "hole": 2}, masks=False)

    result = training.train_and_evaluate(
        "patchcore", "widget", _spec(root, False), _patchcore_profile(weights_dir), tmp_path / "run"
    )

    assert 0.0 <= result.metrics["image_auroc"] <= 1.0
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
    # the cell's inference paths: torch fp32 scored the whole test split, timed image by image
    (fp32,) = result.latency
    assert (fp32.path, fp32.status, fp32.auroc_delta) == ("torch-fp32", "ok", 0.0)
    assert fp32.timed_runs >= len(result.scores) and fp32.p50_ms > 0


def test_patchcore_with_masks_reports_pixel_metrics(make_dataset, weights_dir, tmp_path):
    root = make_dataset(n_train=8, n_test_good=2, defects={"scratch": 3})

    result = training.train_and_evaluate(
        "patchcore", "widget", _spec(root, True), _patchcore_profile(weights_dir), tmp_path / "run"
    )

    for key in ("image_auroc", "pixel_auroc", "pixel_f1", "aupro"):
        assert 0.0 <= result.metrics[key] <= 1.0, key
    assert {level for level, _, _ in result.roc_points} == {"image", "pixel"}
    assert len(result.scores) == 5


def test_validation_can_come_from_a_named_folder(make_dataset, weights_dir, tmp_path):
    root = make_dataset(n_train=6, n_test_good=2, defects={"scratch": 2})
    validation = make_dataset(n_train=1, n_test_good=2, defects={"scratch": 2}) / "widget" / "test"
    profile = _patchcore_profile(weights_dir).model_copy(
        update={"validation": ValidationSettings(directory=str(validation))}
    )

    result = training.train_and_evaluate(
        "patchcore", "widget", _spec(root, True), profile, tmp_path / "run"
    )

    assert result.attempts[0].validation_metric is not None
    assert result.settings["validation"]["directory"] == str(validation)
    assert len(result.scores) == 4


def test_unknown_model_is_refused(tiny_spec, tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        training.train_and_evaluate("padim", "widget", tiny_spec, load_profile("quick"), tmp_path)
