"""The manifest: one row per file, links between images and masks, the read cache."""

from __future__ import annotations

import json
import os

import pytest

from tasks.results.types import DatasetSpec
from tasks.validation import manifest as manifest_module
from tasks.validation.manifest import COLUMNS, build_manifest


def _spec(root, categories=("widget",)) -> DatasetSpec:
    return DatasetSpec(kind="folder", root=root, categories=categories)


def test_one_row_per_file_with_the_documented_columns(make_dataset):
    root = make_dataset(n_train=3, n_test_good=2, defects={"scratch": 2})
    (root / "widget" / "readme.txt").write_text("category docs are not data")
    manifest = build_manifest(_spec(root))
    assert list(manifest.columns) == COLUMNS
    files = {p for p in (root / "widget").rglob("*") if p.is_file() and p.parent != root / "widget"}
    assert set(manifest["path"]) == {str(p) for p in files}
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    assert counts == {("train", "good"): 3, ("test", "good"): 2, ("test", "defect"): 2,
                      ("ground_truth", "defect"): 2}  # fmt: skip
    row = manifest.set_index("relpath").loc["widget/test/scratch/001.png"]
    assert row["mask_path"] == str(root / "widget" / "ground_truth" / "scratch" / "001_mask.png")
    assert row["defect_type"] == "scratch" and row["width"] == 64 and row["channels"] == 1
    mask = manifest.set_index("path").loc[row["mask_path"]]
    assert mask["image_path"] == str(root / "widget" / "test" / "scratch" / "001.png")
    assert bool(mask["mask_binary"]) is True
    assert manifest["readable"].all() and manifest["read_error"].isna().all()
    assert manifest["sha256"].str.len().eq(64).all()


def test_missing_links_are_none(make_dataset):
    root = make_dataset(defects={"hole": 1})
    (root / "widget" / "test" / "hole" / "000.png").unlink()
    manifest = build_manifest(_spec(root)).set_index("relpath")
    assert manifest.loc["widget/ground_truth/hole/000_mask.png", "image_path"] is None
    assert manifest.loc["widget/train/good/000.png", "mask_path"] is None


def test_bad_files_are_recorded_not_raised(make_dataset):
    root = make_dataset()
    good = root / "widget" / "train" / "good"
    (good / "empty.png").write_bytes(b"")
    (good / "text.png").write_text("hello")
    data = (good / "000.png").read_bytes()
    (good / "000.png").write_bytes(data[:100])
    manifest = build_manifest(_spec(root)).set_index("relpath")
    for name in ("empty.png", "text.png", "000.png"):
        row = manifest.loc[f"widget/train/good/{name}"]
        assert not row["readable"] and row["read_error"], name
    assert manifest.loc["widget/train/good/empty.png", "bytes"] == 0
    assert "truncated" in manifest.loc["widget/train/good/000.png", "read_error"]


def test_rerun_reads_nothing_from_cache(make_dataset, tmp_path, monkeypatch):
    root = make_dataset()
    cache = tmp_path / "cache" / "manifest.json"
    first = build_manifest(_spec(root), cache_path=cache)
    assert len(json.loads(cache.read_text())["files"]) == len(first)

    def no_reading(*args, **kwargs):
        pytest.fail("a cached file was read again")

    monkeypatch.setattr(manifest_module, "read_file_facts", no_reading)
    again = build_manifest(_spec(root), cache_path=cache)
    assert again.equals(first)


def test_changed_file_is_read_again(make_dataset, tmp_path, monkeypatch):
    root = make_dataset()
    cache = tmp_path / "manifest.json"
    build_manifest(_spec(root), cache_path=cache)
    changed = root / "widget" / "train" / "good" / "001.png"
    changed.write_bytes(b"not a png any more")
    os.utime(changed, ns=(1, 1))
    read = []
    real = manifest_module.read_file_facts
    monkeypatch.setattr(manifest_module, "read_file_facts",
                        lambda path, is_mask: read.append(path) or real(path, is_mask))  # fmt: skip
    manifest = build_manifest(_spec(root), cache_path=cache).set_index("path")
    assert read == [changed]
    assert not manifest.loc[str(changed), "readable"]


def test_corrupt_cache_is_ignored(make_dataset, tmp_path):
    root = make_dataset()
    cache = tmp_path / "manifest.json"
    cache.write_text("{not json")
    manifest = build_manifest(_spec(root), cache_path=cache)
    assert manifest["readable"].all()
    assert json.loads(cache.read_text())["version"] == manifest_module.CACHE_VERSION


def test_masks_expected_follows_the_category(make_dataset):
    root = make_dataset(categories=("with_masks",))
    bare = make_dataset(categories=("bare",), masks=False)
    (bare / "bare").rename(root / "bare")
    manifest = build_manifest(DatasetSpec("folder", root, ("with_masks", "bare"), False))
    expected = manifest.groupby("category")["masks_expected"].all().to_dict()
    assert expected == {"with_masks": True, "bare": False}


def test_cache_path_may_be_a_folder(make_dataset, tmp_path):
    root = make_dataset()
    (tmp_path / "cache").mkdir()
    build_manifest(_spec(root), cache_path=tmp_path / "cache")
    assert (tmp_path / "cache" / "manifest.json").is_file()
