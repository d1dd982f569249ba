"""The catalog of bad inputs: each is refused with the rule name and the file path shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.datasets import prepare_dataset
from tasks.results import DatasetError, ValidationReport
from tasks.validation import validate_dataset


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _validate(root: Path) -> ValidationReport:
    _, report = validate_dataset(prepare_dataset("folder", root, None))
    return report


def _assert_refused(report: ValidationReport, rule: str, path: Path | str) -> None:
    failed = {r.rule for r in report.failures}
    assert not report.passed
    assert rule in failed, report.summary()
    summary = report.summary()
    assert rule in summary and str(path) in summary, summary


def test_truncated_png(make_dataset):
    root = make_dataset()
    image = root / "widget" / "train" / "good" / "001.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    report = _validate(root)
    _assert_refused(report, "file_opens_as_image", image)
    assert {r.rule for r in report.failures} == {"file_opens_as_image"}


def test_zero_byte_file(make_dataset):
    root = make_dataset()
    image = root / "widget" / "test" / "good" / "000.png"
    image.write_bytes(b"")
    report = _validate(root)
    _assert_refused(report, "file_not_empty", image)
    _assert_refused(report, "file_opens_as_image", image)


def test_text_file_named_png(make_dataset):
    root = make_dataset()
    fake = root / "widget" / "train" / "good" / "notes.png"
    fake.write_text("this is not an image\n")
    report = _validate(root)
    _assert_refused(report, "file_opens_as_image", fake)


def test_missing_mask(make_dataset):
    root = make_dataset()
    image = root / "widget" / "test" / "scratch" / "001.png"
    (root / "widget" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    report = _validate(root)
    _assert_refused(report, "defect_has_mask", image)


def test_orphan_mask(make_dataset):
    root = make_dataset()
    mask = write_png(root / "widget" / "ground_truth" / "hole" / "007_mask.png",
                     np.zeros((64, 64), np.uint8))  # fmt: skip
    report = _validate(root)
    _assert_refused(report, "mask_has_image", mask)


def test_mask_of_wrong_size(make_dataset):
    root = make_dataset()
    mask = write_png(root / "widget" / "ground_truth" / "scratch" / "000_mask.png",
                     np.zeros((32, 48), np.uint8))  # fmt: skip
    report = _validate(root)
    _assert_refused(report, "mask_matches_image_size", mask)


def test_non_binary_mask(make_dataset):
    root = make_dataset()
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    mask = write_png(root / "widget" / "ground_truth" / "hole" / "000_mask.png", gradient)
    report = _validate(root)
    _assert_refused(report, "mask_is_binary", mask)


def test_empty_train_good(make_dataset):
    root = make_dataset()
    for image in (root / "widget" / "train" / "good").iterdir():
        image.unlink()
    report = _validate(root)
    _assert_refused(report, "min_images_per_split", root / "widget" / "train" / "good")


def test_no_train_folder(make_dataset):
    root = make_dataset()
    shutil.rmtree(root / "widget" / "train")
    with pytest.raises(DatasetError, match="no train/") as raised:
        prepare_dataset("folder", root, None)
    assert str(root / "widget") in str(raised.value)


def test_same_image_in_train_and_test(make_dataset):
    root = make_dataset()
    train = root / "widget" / "train" / "good" / "002.png"
    leaked = root / "widget" / "test" / "good" / "005.png"
    shutil.copyfile(train, leaked)
    report = _validate(root)
    _assert_refused(report, "no_train_test_overlap", leaked)
    assert str(train) in report.summary()


def test_unknown_split_folder(make_dataset):
    root = make_dataset()
    stray = root / "widget" / "validation" / "good" / "000.png"
    stray.parent.mkdir(parents=True)
    shutil.copyfile(root / "widget" / "test" / "good" / "000.png", stray)
    report = _validate(root)
    _assert_refused(report, "known_split", stray)


def test_defective_image_in_train(make_dataset):
    root = make_dataset()
    misplaced = root / "widget" / "train" / "scratch" / "000.png"
    misplaced.parent.mkdir(parents=True)
    shutil.move(root / "widget" / "test" / "hole" / "000.png", misplaced)
    (root / "widget" / "ground_truth" / "hole" / "000_mask.png").unlink()
    report = _validate(root)
    _assert_refused(report, "no_defect_in_train", misplaced)


def test_mixed_image_sizes(make_dataset):
    root = make_dataset()
    odd = write_png(root / "widget" / "train" / "good" / "009.png",
                    np.full((80, 80), 128, np.uint8))  # fmt: skip
    report = _validate(root)
    _assert_refused(report, "uniform_image_size", odd)


def test_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="does not exist") as raised:
        prepare_dataset("folder", missing, None)
    assert str(missing) in str(raised.value)


def test_category_that_does_not_exist(make_dataset):
    root = make_dataset(categories=("widget", "gadget"))
    with pytest.raises(DatasetError, match="does not exist") as raised:
        prepare_dataset("folder", root, ["sprocket"])
    message = str(raised.value)
    assert "sprocket" in message and str(root) in message
    assert "gadget" in message and "widget" in message  # lists the ones that do


def test_every_failure_is_collected_not_only_the_first(make_dataset):
    root = make_dataset()
    (root / "widget" / "train" / "good" / "000.png").write_bytes(b"")
    (root / "widget" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    write_png(root / "widget" / "ground_truth" / "hole" / "000_mask.png",
              np.full((64, 64), 7, np.uint8))  # fmt: skip
    report = _validate(root)
    assert {"file_opens_as_image", "defect_has_mask", "mask_is_binary"} <= {
        r.rule for r in report.failures
    }
