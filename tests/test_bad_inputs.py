"""The catalog of bad inputs: each is refused with the rule name and the file path shown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.data.datasets import prepare_dataset
from tasks.results.types import DatasetError, ValidationReport
from tasks.runtime.paths import UnsafePath, artifact_dir
from tasks.validation.manifest import build_manifest
from tasks.validation.rules import validate_dataset


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


# --------------------------------------------------------------- what training would read
# Each case below is an entry anomalib's Folder datamodule would glob. The gate either
# refuses it by a named rule that names the entry, or training handles it correctly.

GOOD = ("widget", "train", "good")


def _manifest_within(root: Path, seconds: float = 5.0):
    """Build the manifest in a thread; fail (not hang) if it takes over `seconds`."""
    done: list = []
    thread = threading.Thread(
        target=lambda: done.append(build_manifest(prepare_dataset("folder", root, None))),
        daemon=True,
    )
    thread.start()
    thread.join(seconds)
    assert done, f"building the manifest took over {seconds} s: a read blocked"
    return done[0]


def test_16_bit_png_is_refused(make_dataset):
    root = make_dataset()
    deep = root.joinpath(*GOOD, "010.png")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I")  # what convert("RGB") clips to white
    report = _validate(root)
    _assert_refused(report, "pixel_format", deep)
    assert f"{deep} (mode I" in report.summary()


def test_float_tiff_is_refused(make_dataset):
    root = make_dataset()
    floats = root.joinpath(*GOOD, "010.tif")
    Image.fromarray(np.random.default_rng(0).random((64, 64), np.float32)).save(floats)
    report = _validate(root)
    _assert_refused(report, "pixel_format", floats)
    assert f"{floats} (mode F)" in report.summary()


def test_masks_of_0_and_1_pass_and_anomalib_reads_the_same_defect(make_dataset):
    """anomalib 2.7's read_mask takes every non-zero pixel as defect, so 0/1 masks are
    read exactly like 0/255 ones: the gate lets them through, and this proves why."""
    from anomalib.data.datasets.image.folder import FolderDataset
    from anomalib.data.utils import Split

    root = make_dataset(defects={"scratch": 1})
    mask_path = root / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    mask_255 = np.asarray(Image.open(mask_path))
    write_png(mask_path, (mask_255 > 0).astype(np.uint8))
    assert set(np.unique(np.asarray(Image.open(mask_path))).tolist()) == {0, 1}
    assert _validate(root).passed
    category = root / "widget"
    dataset = FolderDataset(
        name="widget", root=category, normal_dir="train/good", abnormal_dir="test/scratch",
        mask_dir="ground_truth/scratch", split=Split.TEST,
    )  # fmt: skip
    (item,) = [dataset[i] for i in range(len(dataset)) if dataset[i].gt_label]
    assert np.array_equal(item.gt_mask.numpy().astype(bool), mask_255 > 0)


def test_empty_mask_is_refused(make_dataset):
    root = make_dataset()
    mask = write_png(root / "widget" / "ground_truth" / "hole" / "000_mask.png",
                     np.zeros((64, 64), np.uint8))  # fmt: skip
    report = _validate(root)
    _assert_refused(report, "mask_marks_defect", mask)


def test_macos_resource_fork_is_refused(make_dataset):
    root = make_dataset()
    fork = root.joinpath(*GOOD, "._000.png")
    fork.write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # AppleDouble header, not a PNG
    report = _validate(root)
    _assert_refused(report, "no_hidden_files", fork)


def test_file_in_hidden_folder_is_refused(make_dataset):
    root = make_dataset()
    hidden = root.joinpath(*GOOD, ".thumbs", "000.png")
    hidden.parent.mkdir()
    shutil.copyfile(root.joinpath(*GOOD, "000.png"), hidden)
    report = _validate(root)
    _assert_refused(report, "no_hidden_files", hidden)
    _assert_refused(report, "in_class_folder", hidden)


def test_webp_test_image_is_validated_and_counted_by_training(make_dataset):
    from tasks.data.datamodule import make_datamodule
    from tasks.runtime.profiles import load_profile

    root = make_dataset()
    good = root / "widget" / "test" / "good"
    webp = good / "000.webp"
    Image.open(good / "000.png").save(webp, lossless=True)
    (good / "000.png").unlink()
    manifest, report = validate_dataset(prepare_dataset("folder", root, None))
    assert report.passed, report.summary()
    assert str(webp) in set(manifest["path"])
    spec = prepare_dataset("folder", root, None)
    datamodule, _, n_test = make_datamodule(spec, "widget", load_profile("quick"), 1)
    datamodule.setup()
    assert n_test == len(datamodule.test_data) == 5
    assert str(webp) in set(datamodule.test_data.samples["image_path"])


def test_extension_anomalib_ignores_is_refused(make_dataset):
    root = make_dataset()
    gif = root.joinpath(*GOOD, "010.gif")
    Image.open(root.joinpath(*GOOD, "000.png")).save(gif)
    report = _validate(root)
    _assert_refused(report, "image_extension", gif)


def test_symlinked_train_good_is_refused_by_name(make_dataset, tmp_path):
    root = make_dataset()
    good = root.joinpath(*GOOD)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(good, elsewhere)
    good.symlink_to(elsewhere, target_is_directory=True)
    report = _validate(root)
    _assert_refused(report, "no_symlinks", good)
    assert f"{good} (symlink to {elsewhere}" in report.summary()


def test_fifo_is_refused_without_being_opened(make_dataset):
    root = make_dataset()
    fifo = root.joinpath(*GOOD, "010.png")
    os.mkfifo(fifo)  # opening it to read would block until a writer comes
    manifest = _manifest_within(root)
    assert manifest.set_index("path").loc[str(fifo), "file_type"] == "fifo"
    report = _validate(root)
    _assert_refused(report, "regular_file", fifo)
    assert {r.rule for r in report.failures} == {"regular_file"}


def test_symlink_to_dev_zero_is_never_read(make_dataset):
    root = make_dataset()
    zero = root.joinpath(*GOOD, "010.png")
    zero.symlink_to("/dev/zero")  # reading it would never end
    manifest = _manifest_within(root)
    assert manifest.set_index("path").loc[str(zero), "bytes"] < 100
    report = _validate(root)
    _assert_refused(report, "no_symlinks", zero)


def test_read_over_the_size_cap_is_refused_unread(make_dataset, monkeypatch):
    from tasks.validation import manifest as manifest_module

    root = make_dataset()
    big = root.joinpath(*GOOD, "000.png")
    monkeypatch.setattr(manifest_module, "MAX_FILE_BYTES", 100)
    manifest = build_manifest(prepare_dataset("folder", root, None)).set_index("path")
    assert not manifest.loc[str(big), "readable"]
    assert "over the cap: not read" in manifest.loc[str(big), "read_error"]
    assert pd.isna(manifest.loc[str(big), "sha256"])


def test_name_with_a_control_character_is_refused_and_shown_escaped(make_dataset):
    root = make_dataset()
    bell = root.joinpath(*GOOD, "010\x07.png")
    shutil.copyfile(root.joinpath(*GOOD, "000.png"), bell)
    report = _validate(root)
    assert "printable_ascii_path" in {r.rule for r in report.failures}, report.summary()
    summary = report.summary()
    assert ascii(str(bell)) in summary and "\x07" not in summary


def test_non_ascii_name_is_refused(make_dataset):
    root = make_dataset()
    accented = root.joinpath(*GOOD, "défaut.png")
    shutil.copyfile(root.joinpath(*GOOD, "000.png"), accented)
    report = _validate(root)
    _assert_refused(report, "printable_ascii_path", accented)


def test_file_loose_in_a_split_folder_is_refused(make_dataset):
    root = make_dataset()
    loose = root / "widget" / "test" / "010.png"
    shutil.copyfile(root.joinpath(*GOOD, "000.png"), loose)
    report = _validate(root)
    _assert_refused(report, "in_class_folder", loose)


def test_gate_lists_exactly_what_anomalib_globs_on_a_valid_dataset(make_dataset):
    """On data the gate passes, its files are exactly the files anomalib's Folder reads."""
    from tasks.data.datamodule import make_datamodule
    from tasks.runtime.profiles import load_profile

    root = make_dataset()
    spec = prepare_dataset("folder", root, None)
    manifest, report = validate_dataset(spec)
    assert report.passed, report.summary()
    datamodule, _, _ = make_datamodule(spec, "widget", load_profile("quick"), 1)
    datamodule.setup()
    read = {
        *datamodule.train_data.samples["image_path"], *datamodule.val_data.samples["image_path"],
        *datamodule.test_data.samples["image_path"], *datamodule.test_data.samples["mask_path"],
    }  # fmt: skip
    # painted validation anomalies are written to the run's work folder, not the dataset
    from_dataset = {p for p in read if p and Path(p).is_relative_to(root)}
    assert from_dataset == set(manifest["path"])


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("name", ["../x", "../../x", "a/b", "/etc", "", ".", "..", ".hidden",
                                  "x\ny", "caf\u00e9", " x"])  # fmt: skip
@pytest.mark.parametrize("kind", ["demo", "folder", "mvtec"])
def test_category_that_is_not_a_plain_name_is_refused_before_anything_is_created(
    tmp_path, kind, name
):
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="not a plain folder name") as raised:
        prepare_dataset(kind, root, [name])
    assert repr(name) in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_category_folder_with_an_unsafe_name_is_refused(make_dataset):
    root = make_dataset()
    (root / "widget").rename(root / "wid get ")
    with pytest.raises(DatasetError, match="not a plain folder name"):
        prepare_dataset("folder", root, None)


def test_artifact_dir_stays_inside_output_dir(tmp_path):
    out = tmp_path / "runs"
    assert artifact_dir(out, "r1", "patchcore", "grid") == out / "r1" / "patchcore" / "grid"
    with pytest.raises(UnsafePath, match="not a plain folder name"):
        artifact_dir(out, "r1", "patchcore", "../../x")
    (out / "r2").mkdir(parents=True)
    (out / "r2" / "patchcore").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafePath, match="outside"):
        artifact_dir(out, "r2", "patchcore", "grid")


def _benchmark_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m flows.benchmark --dataset folder --models patchcore ARGS` on a temporary
    Prefect server."""
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # slow to start on 2 cores
        PYTHONUNBUFFERED="1",
    )
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.benchmark", "--dataset", "folder", "--models",
         "patchcore", *args],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_benchmark_with_category_climbing_out_is_refused_and_creates_nothing_outside(
    make_dataset, tmp_path
):
    """The real flow (temporary Prefect server): refused with the name, exit code 1, and
    nothing written outside output_dir except the results database."""
    root = make_dataset()
    work = tmp_path / "work"
    work.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    result = _benchmark_cli(
        tmp_path, "--data-root", str(root / "widget" / "train"), "--categories", "../x",
        "--output-dir", str(work / "runs"), "--reports-dir", str(work / "reports"),
        "--db", str(work / "db" / "b.duckdb"),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "category '../x' is not a plain folder name" in result.stderr
    created = {p for p in tmp_path.rglob("*")} - before
    outside = {
        p for p in created
        if not p.is_relative_to(tmp_path / "prefect-home") and not p.is_relative_to(work / "db")
    }  # fmt: skip
    assert outside <= {work / "db"} | {work}, sorted(outside)
    assert not (root / "widget" / "x").exists() and not (root / "x").exists()


# ------------------------------------------------------------- validation.directory


def _validation_dir(tmp_path: Path) -> Path:
    """A validation folder (good/ + scratch/) of fresh images, none of them in the dataset."""
    folder = tmp_path / "val"
    rng = np.random.default_rng(99)
    for kind in ("good", "scratch"):
        for i in range(2):
            write_png_in(folder / kind / f"{i:03d}.png", rng.integers(0, 255, (64, 64)))
    return folder


def write_png_in(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, array.astype(np.uint8))


def test_clean_validation_directory_passes_the_gate(make_dataset, tmp_path):
    root = make_dataset()
    folder = _validation_dir(tmp_path)
    spec = prepare_dataset("folder", root, None)
    manifest, report = validate_dataset(spec, validation_dir=folder)
    assert report.passed, report.summary()
    assert (manifest["category"] == "<validation>").sum() == 4
    assert any(r.category == "<validation>" and r.rule == "no_validation_test_overlap"
               for r in report.rules)  # fmt: skip
    _, without = validate_dataset(spec)
    assert without.dataset_hash != report.dataset_hash  # the trained result depends on it


def test_validation_image_copied_from_test_is_refused(make_dataset, tmp_path):
    root = make_dataset()
    folder = _validation_dir(tmp_path)
    test_image = root / "widget" / "test" / "scratch" / "001.png"
    leaked = folder / "scratch" / "leaked.png"
    shutil.copyfile(test_image, leaked)
    _, report = validate_dataset(prepare_dataset("folder", root, None), validation_dir=folder)
    _assert_refused(report, "no_validation_test_overlap", leaked)
    assert f"{leaked} (same content as {test_image})" in report.summary()


def test_validation_directory_gets_the_same_file_rules(make_dataset, tmp_path):
    root = make_dataset()
    folder = _validation_dir(tmp_path)
    fork = folder / "good" / "._000.png"
    fork.write_bytes(b"\x00\x05\x16\x07")
    deep = folder / "good" / "010.png"
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(deep)
    hidden_class = folder / ".cache" / "000.png"
    write_png_in(hidden_class, np.zeros((64, 64)))
    _, report = validate_dataset(prepare_dataset("folder", root, None), validation_dir=folder)
    _assert_refused(report, "no_hidden_files", fork)
    _assert_refused(report, "no_hidden_files", hidden_class)
    _assert_refused(report, "pixel_format", deep)
    assert {r.category for r in report.failures} == {"<validation>"}


def test_missing_validation_directory_is_a_clear_error(make_dataset, tmp_path):
    root = make_dataset()
    with pytest.raises(DatasetError, match="validation.directory .* is not a folder") as raised:
        validate_dataset(prepare_dataset("folder", root, None), validation_dir=tmp_path / "nope")
    assert str(tmp_path / "nope") in str(raised.value)


def test_empty_defect_folder_is_refused(make_dataset):
    root = make_dataset()
    empty = root / "widget" / "test" / "crack"
    empty.mkdir()  # anomalib's Folder stops on it: "Found 0 abnormal images"
    report = _validate(root)
    _assert_refused(report, "no_empty_folders", empty)


def test_masks_anomalib_would_pair_with_the_wrong_image_are_refused(make_dataset):
    """anomalib pairs sorted images with sorted masks by position: `a.png, a_b.png` sort
    one way, `a_b_mask.png, a_mask.png` the other, so training would stop (or score the
    wrong mask). The gate refuses it, naming the mask."""
    from anomalib.data.datasets.image.folder import FolderDataset
    from anomalib.data.utils import Split

    root = make_dataset(defects={"scratch": 2})
    images, masks = (
        root / "widget" / "test" / "scratch",
        root / "widget" / "ground_truth" / "scratch",
    )
    for old, new in (("000", "a"), ("001", "a_b")):
        (images / f"{old}.png").rename(images / f"{new}.png")
        (masks / f"{old}_mask.png").rename(masks / f"{new}_mask.png")
    report = _validate(root)
    _assert_refused(report, "mask_order_matches_images", masks / "a_mask.png")
    with pytest.raises(Exception, match="Mismatch between anomalous images and mask images"):
        FolderDataset(name="w", root=root / "widget", normal_dir="train/good",
                      abnormal_dir="test/scratch", mask_dir="ground_truth/scratch",
                      split=Split.TEST)  # fmt: skip


@pytest.mark.slow
def test_benchmark_refuses_a_validation_directory_holding_a_test_image(make_dataset, tmp_path):
    """The flow puts the profile's validation.directory through the gate: refused, the
    file named, nothing trained."""
    root = make_dataset()
    folder = _validation_dir(tmp_path)
    leaked = folder / "good" / "leaked.png"
    shutil.copyfile(root / "widget" / "test" / "good" / "001.png", leaked)
    overrides = json.dumps({"validation": {"directory": str(folder)}})
    result = _benchmark_cli(
        tmp_path, "--data-root", str(root), "--overrides", overrides,
        "--output-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"),
        "--db", str(tmp_path / "b.duckdb"),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no_validation_test_overlap (<validation>)" in result.stderr
    assert str(leaked) in result.stderr
    assert not (tmp_path / "runs").exists()
