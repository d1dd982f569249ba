"""The training cache key: any byte of project code, a library version or a weights file
changes it; a served cached result names the run it came from."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

import tasks.training.cache as cache
from flows.benchmark import train_and_evaluate_task
from tasks.results.types import ModelResult, StageOutcome
from tasks.runtime.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project's packages copied to tmp_path, which the cache key then reads."""
    for package in cache.PROJECT_PACKAGES:
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    monkeypatch.setattr(cache, "REPO_ROOT", tmp_path)
    return tmp_path


def _key(profile) -> str:
    return cache.training_cache_key(
        None,
        {
            "model_name": "patchcore",
            "category": "demo_grid",
            "dataset_hash": "ab",
            "profile": profile,
        },
    )


def test_the_benchmark_task_uses_the_project_cache_key():
    assert train_and_evaluate_task.cache_key_fn is cache.training_cache_key


def test_one_byte_of_evaluation_code_changes_the_key(project_copy: Path, tmp_path: Path):
    profile = load_profile("quick", {"weights_dir": str(tmp_path / "weights")})
    before = _key(profile)
    assert _key(profile) == before  # same code, same key: the cell is reused
    source = project_copy / "tasks" / "training" / "evaluation.py"
    data = bytearray(source.read_bytes())
    data[-2] ^= 0x01
    source.write_bytes(bytes(data))
    assert _key(profile) != before  # the cell trains again


@pytest.mark.parametrize("package", ["checks", "flows", "tasks"])
def test_a_new_module_in_any_project_package_changes_the_key(project_copy: Path, package: str):
    before = cache.code_fingerprint()
    (project_copy / package / "new_stage.py").write_text("X = 1\n")
    assert cache.code_fingerprint() != before


def test_a_changed_weights_file_or_library_version_changes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    weights = tmp_path / "weights"
    weights.mkdir()
    teacher = weights / "teacher.pth"
    teacher.write_bytes(b"\x00" * 64)
    profile = load_profile("quick", {"weights_dir": str(weights)})
    before = _key(profile)
    assert str(teacher.resolve()) in cache.weights_fingerprint(profile)
    teacher.write_bytes(b"\x01" + b"\x00" * 63)
    after = _key(profile)
    assert after != before
    monkeypatch.setattr(cache, "library_versions", lambda: {"anomalib": "9.9"})
    assert _key(profile) != after


def test_an_asset_fetched_or_changed_changes_the_key_and_locks_do_not(tmp_path: Path):
    profile = load_profile(
        "quick", {"weights_dir": str(tmp_path / "weights"), "assets": {"dir": str(tmp_path)}}
    )
    before = _key(profile)
    assert cache.assets_fingerprint(profile, "patchcore") == {"wide_resnet50_2": "missing"}
    (tmp_path / "weights" / ".locks").mkdir(parents=True)  # a lock left by a preparation
    (tmp_path / "weights" / ".locks" / "teacher.lock").touch()
    assert _key(profile) == before
    # wide_resnet50_2 appears in the hub cache (e.g. fetched ahead): quick then uses it
    repo = tmp_path / "huggingface/hub/models--timm--wide_resnet50_2.racm_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    fetched = _key(profile)
    assert fetched != before
    (snapshot / "model.safetensors").write_bytes(b"other weights")
    assert _key(profile) != fetched


def test_a_cached_result_names_its_source_run_and_marks_its_timings():
    result = ModelResult(
        model="patchcore",
        category="demo_grid",
        profile="quick",
        settings={},
        weights={},
        device="cpu",
        metrics={},
        train_seconds=12.0,
        stages=[StageOutcome("export", "completed"), StageOutcome("latency", "completed")],
        trained_in="run-a",
    )
    assert cache.mark_cached(result, "run-a") is result  # the run that trained it
    served = cache.mark_cached(result, "run-b")
    assert served.cached_from == "run-a"
    assert [s.status for s in served.stages] == ["cached", "cached"]
    assert any("run-a" in n and "not this run's" in n for n in served.notes)
    assert dataclasses.replace(
        served, notes=[], stages=[], cached_from=None
    ) == dataclasses.replace(result, notes=[], stages=[])
