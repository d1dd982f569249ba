"""Shared fixtures: tiny MVTec-layout datasets built in tmp paths, the demo dataset, and the
real MVTec AD subset beside the checkout (skipped with a reason when absent).

Every test, and every process a test starts, sees empty weight caches: huggingface_hub's
(HF_HOME, HF_HUB_CACHE), anomalib's `pre_trained` folder (platformdirs' user cache,
XDG_CACHE_HOME), torch hub's (TORCH_HOME), and no ANOMALY_BENCHMARK_ASSETS_DIR. A
developer's own downloads never make a test pass or fail. They are set here, before
huggingface_hub is imported (it reads its cache folder once, at import).

Example:
    def test_something(make_dataset):
        root = make_dataset(categories=("widget",), defects={"scratch": 2})
        spec = prepare_dataset("folder", root, None)
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Made once per session: test modules that `from conftest import ...` load this file a
# second time, under another module name, and must find the same folders.
if "ANOMALY_BENCHMARK_TEST_CACHES" in os.environ:
    EMPTY_CACHES = Path(os.environ["ANOMALY_BENCHMARK_TEST_CACHES"])
else:
    EMPTY_CACHES = Path(tempfile.mkdtemp(prefix="anomaly-benchmark-test-caches-"))
    os.environ["ANOMALY_BENCHMARK_TEST_CACHES"] = str(EMPTY_CACHES)
    atexit.register(shutil.rmtree, EMPTY_CACHES, ignore_errors=True)
os.environ["HF_HOME"] = str(EMPTY_CACHES / "huggingface")
os.environ["HF_HUB_CACHE"] = str(EMPTY_CACHES / "huggingface" / "hub")
os.environ["XDG_CACHE_HOME"] = str(EMPTY_CACHES / "xdg")
os.environ["TORCH_HOME"] = str(EMPTY_CACHES / "torch")
os.environ.pop("ANOMALY_BENCHMARK_ASSETS_DIR", None)

import numpy as np  # noqa: E402 - after the cache folders are set
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tasks.models.registry import settings_for  # noqa: E402
from tasks.results.types import DatasetSpec  # noqa: E402

SHARED_MVTEC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_ad_subset"


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array as PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(90, 170, (size, size), dtype=np.uint8)


def cpu_engine(work_dir: Path, **trainer_args):
    """anomalib's Engine on the CPU, quiet: no logger, progress bar or model summary."""
    from anomalib.engine import Engine

    return Engine(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=work_dir,
        **trainer_args,
    )


def fit_patchcore(root: Path, image_size: int, work_dir: Path, raw_scores: bool = False):
    """A PatchCore (offline backbone, quick profile) fitted at `image_size` on category
    `widget` of a `build_mvtec_layout` dataset; `raw_scores` as the benchmark stores them."""
    from tasks.data.datamodule import make_datamodule
    from tasks.models.patchcore.model import build_patchcore
    from tasks.runtime.profiles import load_profile
    from tasks.training.evaluation import raw_score_post_processor

    profile = load_profile("quick", {"patchcore": {"image_size": image_size}})
    spec = DatasetSpec(kind="folder", root=root, categories=("widget",), masks_expected=False)
    datamodule, _, _ = make_datamodule(spec, "widget", profile, 8)
    model, _ = build_patchcore(settings_for("patchcore", profile), profile.assets)
    if raw_scores:
        model.post_processor = raw_score_post_processor()
    cpu_engine(work_dir).fit(model, datamodule=datamodule)
    return model


def build_mvtec_layout(
    root: Path,
    categories: Sequence[str] = ("widget",),
    n_train: int = 5,
    n_test_good: int = 2,
    defects: Mapping[str, int] | None = None,
    size: int = 64,
    masks: bool = True,
    seed: int = 0,
) -> Path:
    """A small valid dataset in MVTec AD layout: noise textures, a bright square defect
    with its 0/255 mask. Every image is unique (seeded noise). Returns `root`."""
    defects = {"scratch": 2, "hole": 1} if defects is None else defects
    rng = np.random.default_rng(seed)
    for category in categories:
        base = root / category
        for i in range(n_train):
            write_png(base / "train" / "good" / f"{i:03d}.png", _texture(rng, size))
        for i in range(n_test_good):
            write_png(base / "test" / "good" / f"{i:03d}.png", _texture(rng, size))
        for kind, count in defects.items():
            for i in range(count):
                image, mask = _texture(rng, size), np.zeros((size, size), np.uint8)
                y, x = rng.integers(0, size // 2, 2)
                image[y : y + size // 4, x : x + size // 4] = 250
                mask[y : y + size // 4, x : x + size // 4] = 255
                write_png(base / "test" / kind / f"{i:03d}.png", image)
                if masks:
                    write_png(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `make_dataset(categories=..., n_train=..., defects={"scratch": 2}, ...)`
    builds a fresh MVTec-layout dataset under tmp_path and returns its root."""
    counter = iter(range(1000))

    def make(**kwargs) -> Path:
        n = next(counter)
        return build_mvtec_layout(tmp_path / f"dataset{n}", seed=n, **kwargs)

    return make


@pytest.fixture
def tiny_spec(make_dataset) -> DatasetSpec:
    """A valid one-category ('widget') folder dataset with masks, as a DatasetSpec."""
    root = make_dataset()
    return DatasetSpec(kind="folder", root=root, categories=("widget",), masks_expected=True)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated demo dataset (all DEMO_CATEGORIES), once per test session."""
    from tasks.data.demo_data import ensure_demo_dataset

    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture(scope="session")
def shared_mvtec() -> Path:
    """The real MVTec AD subset (grid, leather) beside the checkout, read-only."""
    if not SHARED_MVTEC.is_dir():
        pytest.skip(f"real MVTec AD subset absent: expected {SHARED_MVTEC} (../shared)")
    return SHARED_MVTEC


@pytest.fixture
def hold_file():
    """`hold_file(path, seconds)`: another process holds the DuckDB file (returns once it
    does); every holder is ended after the test."""
    from lock_holder import LockHolder

    holders: list[LockHolder] = []

    def hold(path: Path, seconds: float) -> LockHolder:
        holders.append(LockHolder(path, seconds))
        return holders[-1]

    yield hold
    for holder in holders:
        holder.release()


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect server and database for in-process flow runs in tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
