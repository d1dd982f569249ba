"""The validation gate on good data: every rule reported, hash stable, notes written."""

from __future__ import annotations

import numpy as np
from PIL import Image

from checks.dataset_expectations import GX_RULES
from checks.manifest_schema import RULES
from tasks.data.datasets import prepare_dataset
from tasks.validation.manifest import build_manifest
from tasks.validation.rules import validate_dataset, validate_manifest


def test_valid_dataset_passes_and_reports_every_rule(make_dataset):
    root = make_dataset(categories=("a", "b"))
    spec = prepare_dataset("folder", root, None)
    manifest, report = validate_dataset(spec)
    assert report.passed, report.summary()
    checked = {(r.tool, r.category, r.rule) for r in report.rules}
    expected_gx = set(GX_RULES) - {"official_counts"}  # only for kind mvtec
    for category in ("a", "b"):
        assert {(("pandera", category, rule)) for rule in RULES} <= checked
        assert {("great_expectations", category, rule) for rule in expected_gx} <= checked
    assert len(report.rules) == len(checked)  # one result per (tool, category, rule)
    assert "all" in report.summary() and len(manifest) > 0


def test_demo_dataset_passes(demo_root):
    spec = prepare_dataset("demo", demo_root, None)
    _, report = validate_dataset(spec)
    assert report.passed, report.summary()
    assert any("not MVTec" in note for note in report.notes)


def test_dataset_hash_is_stable_and_tracks_content(make_dataset):
    root = make_dataset()
    spec = prepare_dataset("folder", root, None)
    first = validate_manifest(build_manifest(spec), spec).dataset_hash
    assert first == validate_manifest(build_manifest(spec), spec).dataset_hash
    assert len(first) == 64
    image = root / "widget" / "train" / "good" / "000.png"
    Image.fromarray(np.full((64, 64), 3, np.uint8)).save(image)
    assert validate_manifest(build_manifest(spec), spec).dataset_hash != first


def test_dataset_hash_ignores_where_the_dataset_lives(make_dataset, tmp_path):
    root = make_dataset()
    moved = tmp_path / "elsewhere"
    a = validate_manifest(build_manifest(spec := prepare_dataset("folder", root, None)), spec)
    root.rename(moved)
    spec = prepare_dataset("folder", moved, None)
    b = validate_manifest(build_manifest(spec), spec)
    assert a.dataset_hash == b.dataset_hash


def test_missing_masks_pass_when_not_expected(make_dataset):
    root = make_dataset(masks=False)
    spec = prepare_dataset("folder", root, None)
    _, report = validate_dataset(spec)
    assert report.passed, report.summary()
    assert any("pixel metrics not available" in note for note in report.notes)


def test_min_images_can_be_raised(make_dataset):
    root = make_dataset(n_train=5)
    spec = prepare_dataset("folder", root, None)
    report = validate_manifest(build_manifest(spec), spec, min_images={"train_good": 50})
    assert [r.rule for r in report.failures] == ["min_images_per_split"]
    assert "minimum 50" in report.summary()


def test_mvtec_counts_subset_is_reported_not_refused(make_dataset):
    root = make_dataset(categories=("tile",), n_train=6, n_test_good=2, defects={"crack": 3})
    spec = prepare_dataset("mvtec", root, None)
    _, report = validate_dataset(spec)
    assert report.passed, report.summary()
    counts = next(r for r in report.rules if r.rule == "official_counts")
    assert counts.passed and "subset: 11 of 347" in counts.message
    assert any(note.startswith("MVTec tile is a subset: 11 of 347") for note in report.notes)


def test_mvtec_counts_above_official_fail(make_dataset):
    root = make_dataset(categories=("toothbrush",), n_train=61, n_test_good=1,
                        defects={"defective": 1}, size=16)  # fmt: skip
    spec = prepare_dataset("mvtec", root, None)
    _, report = validate_dataset(spec)
    assert [r.rule for r in report.failures] == ["official_counts"]
    assert "more images than MVTec AD has" in report.summary()


def test_category_with_no_files_fails_only_on_counts(tmp_path):
    (tmp_path / "data" / "empty" / "train" / "good").mkdir(parents=True)
    spec = prepare_dataset("folder", tmp_path / "data", None)
    manifest, report = validate_dataset(spec)
    assert list(manifest["file_type"]) == ["empty_folder"]
    assert {r.rule for r in report.failures} == {
        "min_images_per_split", "test_has_both_classes", "no_empty_folders"
    }  # fmt: skip
