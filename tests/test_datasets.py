"""The dataset layer: demo generation, layout checks, and MVTec AD through the asset
layer (anomalib's URL pointed at a real HTTP server on 127.0.0.1, or at a closed port)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from asset_files import mvtec_archive
from asset_server import AssetServer, closed_port_url
from PIL import Image

from tasks.data import datasets, demo_data
from tasks.data.datasets import prepare_dataset
from tasks.data.demo_data import DEMO_CATEGORIES
from tasks.results.types import DatasetError
from tasks.runtime.asset_settings import AssetSettings


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_demo_layout_and_counts(demo_root):
    assert {p.name for p in demo_root.iterdir() if p.is_dir()} == set(DEMO_CATEGORIES)
    assert "NOT MVTec AD" in (demo_root / "README.txt").read_text()
    for category in DEMO_CATEGORIES:
        base = demo_root / category
        assert len(list((base / "train" / "good").glob("*.png"))) == demo_data.N_TRAIN
        assert len(list((base / "test" / "good").glob("*.png"))) == demo_data.N_TEST_GOOD
        kinds = demo_data.DEFECTS_BY_CATEGORY[category]
        for kind in kinds:
            images = sorted((base / "test" / kind).glob("*.png"))
            masks = sorted((base / "ground_truth" / kind).glob("*_mask.png"))
            assert len(images) == len(masks) == demo_data.N_PER_DEFECT
        with Image.open(base / "train" / "good" / "000.png") as image:
            assert image.size == (demo_data.IMAGE_SIZE, demo_data.IMAGE_SIZE)


def test_demo_generation_is_deterministic(demo_root, tmp_path):
    again = demo_data.ensure_demo_dataset(tmp_path / "again")
    assert _hashes(again) == _hashes(demo_root)


def test_demo_generation_is_fast(tmp_path):
    start = time.perf_counter()
    demo_data.ensure_demo_dataset(tmp_path / "demo")
    assert time.perf_counter() - start < 20  # goal < 5 s; generous for a loaded CI box


def test_demo_rerun_reuses_and_version_bump_regenerates(tmp_path, monkeypatch):
    root = demo_data.ensure_demo_dataset(tmp_path / "demo")
    sample = root / "demo_grid" / "train" / "good" / "000.png"
    stamp = sample.stat().st_mtime_ns
    demo_data.ensure_demo_dataset(root)
    assert sample.stat().st_mtime_ns == stamp
    monkeypatch.setattr(demo_data, "GENERATOR_VERSION", "test-bump")
    demo_data.ensure_demo_dataset(root)
    assert (root / demo_data.STAMP_FILE).read_text().strip() == "test-bump"
    assert sample.stat().st_mtime_ns != stamp


def test_demo_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not a demo dataset"):
        demo_data.ensure_demo_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").exists()


@pytest.mark.parametrize("kind", sorted(demo_data.DEFECT_PAINTERS))
def test_every_defect_is_visible_and_confined_to_its_mask(kind):
    category = "demo_grid" if kind == "broken_line" else "demo_gravel"
    texture = demo_data._texture(category)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        clean = demo_data._crop(texture, rng, category == "demo_grid")
        defective, mask = demo_data.apply_defect(clean, kind, rng)
        inside = mask == 255
        assert set(np.unique(mask)) == {0, 255}
        assert 20 < inside.sum() < 0.1 * mask.size
        change = np.abs(defective.astype(int) - clean.astype(int))
        assert change[~inside].max() == 0
        assert change[inside].mean() > 25, f"{kind} barely changes the image"


def test_prepare_demo_subset(demo_root):
    spec = prepare_dataset("demo", demo_root, ["demo_grid"])
    assert spec.kind == "demo" and spec.categories == ("demo_grid",) and spec.masks_expected


def test_prepare_demo_unknown_category(demo_root):
    with pytest.raises(DatasetError, match="demo_brick"):
        prepare_dataset("demo", demo_root, ["carpet"])


def test_unknown_kind():
    with pytest.raises(DatasetError, match="unknown dataset kind 'kaggle'"):
        prepare_dataset("kaggle", None, None)


def test_folder_finds_categories_and_masks(make_dataset):
    root = make_dataset(categories=("a", "b"))
    spec = prepare_dataset("folder", root, None)
    assert spec.categories == ("a", "b") and spec.masks_expected


def test_folder_without_masks(make_dataset):
    root = make_dataset(masks=False)
    spec = prepare_dataset("folder", root, None)
    assert not spec.masks_expected


def test_folder_pointing_at_one_category(make_dataset):
    root = make_dataset()
    spec = prepare_dataset("folder", root / "widget", None)
    assert spec.root == root and spec.categories == ("widget",)


@pytest.fixture
def mvtec_url(monkeypatch: pytest.MonkeyPatch):
    """Point anomalib's own MVTec AD `DownloadInfo` at `url` (with the archive's hash)."""
    from anomalib.data.datamodules.image.mvtecad import DOWNLOAD_INFO

    def point(url: str, sha256: str = DOWNLOAD_INFO.hashsum) -> None:
        monkeypatch.setattr(DOWNLOAD_INFO, "url", url)
        monkeypatch.setattr(DOWNLOAD_INFO, "hashsum", sha256)

    return point


def test_mvtec_offline_fails_fast_with_instructions(tmp_path, mvtec_url):
    mvtec_url(closed_port_url() + "/mvtec_anomaly_detection.tar.xz")
    missing = tmp_path / "mvtec"
    started = time.perf_counter()
    with pytest.raises(DatasetError) as raised:
        prepare_dataset("mvtec", missing, ["grid"], AssetSettings(timeout_s=2.0))
    assert time.perf_counter() - started < 10
    message = str(raised.value)
    assert str(missing) in message and "does not exist" in message
    assert "cannot connect to 127.0.0.1" in message  # why, and it is offline
    assert (
        "python -m flows.fetch_assets --models none --dataset mvtec --categories grid "
        f"--data-root {missing}"
    ) in message
    assert "mvtec.com" in message and "train/good" in message


def test_mvtec_never_downloaded_under_never_and_not_called_offline(tmp_path, mvtec_url):
    with AssetServer() as server:
        mvtec_url(server.add_file("mvtec_anomaly_detection.tar.xz", b"unused"))
        with pytest.raises(DatasetError) as raised:
            prepare_dataset("mvtec", tmp_path, ["grid"], AssetSettings(download="never"))
        assert server.total_requests == 0
    message = str(raised.value)
    assert "MVTec AD category grid not found" in message and "'never'" in message
    assert "offline" not in message


def test_mvtec_fetched_through_the_asset_layer_then_read_from_disk(tmp_path, mvtec_url):
    archive = mvtec_archive(("grid",))
    root = tmp_path / "mvtec"
    with AssetServer() as server:
        mvtec_url(server.add_file("mvtec_anomaly_detection.tar.xz", archive.data), archive.sha256)
        spec = prepare_dataset("mvtec", root, ["grid"], AssetSettings(timeout_s=2.0))
        assert server.count("GET", "/files/mvtec_anomaly_detection.tar.xz") == 1
    assert spec.categories == ("grid",) and spec.masks_expected
    assert len(list((root / "grid" / "train" / "good").glob("*.png"))) == 3
    assert json.loads((root / ".mvtec_ad.verified.json").read_text())["sha256"] == archive.sha256
    # the server is gone: the second run reads the copy on disk
    assert prepare_dataset("mvtec", root, ["grid"], AssetSettings()).categories == ("grid",)


def test_mvtec_with_a_wrong_hash_is_refused_and_nothing_kept(tmp_path, mvtec_url):
    archive = mvtec_archive(("grid",))
    with AssetServer() as server:
        mvtec_url(server.add_file("mvtec_anomaly_detection.tar.xz", archive.data), "0" * 64)
        with pytest.raises(DatasetError, match="hash mismatch"):
            prepare_dataset("mvtec", tmp_path / "mvtec", ["grid"], AssetSettings(timeout_s=2.0))
    assert not (tmp_path / "mvtec" / "grid").exists()


def test_mvtec_unknown_category(tmp_path):
    with pytest.raises(DatasetError, match="not an MVTec AD category"):
        prepare_dataset("mvtec", tmp_path, ["widget"])


def test_mvtec_category_without_ground_truth(make_dataset):
    root = make_dataset(categories=("grid",))
    shutil.rmtree(root / "grid" / "ground_truth")
    with pytest.raises(DatasetError, match="no ground_truth/") as raised:
        prepare_dataset("mvtec", root, ["grid"])
    assert str(root / "grid") in str(raised.value)


def test_mvtec_uses_present_categories(make_dataset, monkeypatch):
    monkeypatch.setattr(datasets, "fetch_asset", pytest.fail)
    root = make_dataset(categories=("grid", "tile"))
    spec = prepare_dataset("mvtec", root, None)
    assert spec.categories == ("grid", "tile") and spec.masks_expected
