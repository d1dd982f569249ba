"""The dataset layer: resolve a dataset name to a checked `DatasetSpec` in MVTec AD layout.

Three kinds:
- `demo`: generated on first use (see `tasks.data.demo_data`); not MVTec AD.
- `mvtec`: MVTec AD (Bergmann et al., CVPR 2019) under `data_root`; downloaded with
  anomalib only when the download host answers within a few seconds, otherwise a
  `DatasetError` says what is missing and where to put it. Never hangs offline.
- `folder`: the user's own MVTec-like folder; masks are optional.

Only the layout is checked here (paths, categories, `train/`); file contents are the
validation gate's job (`tasks.validation.rules`).

Example:
    >>> spec = prepare_dataset("demo", "data/demo", ["demo_grid"])
    >>> spec.categories
    ('demo_grid',)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from tasks.data.demo_data import DEMO_CATEGORIES, ensure_demo_dataset
from tasks.results.types import DatasetError, DatasetSpec
from tasks.runtime.paths import UnsafePath, plain_name

log = logging.getLogger(__name__)


# anomalib.data.datasets.image.mvtecad.CATEGORIES, repeated to avoid importing torch here.
MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
DEFAULT_ROOTS = {"demo": Path("data/demo"), "mvtec": Path("data/mvtec_ad")}
MVTEC_HOME = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
ONLINE_TIMEOUT_S = 3.0
# host of anomalib's mvtecad DOWNLOAD_INFO.url; named here so the check needs no torch import
MVTEC_DOWNLOAD_HOST = "www.mydrive.ch"


def _category_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_categories(root: Path, wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if not (root / c).is_dir()]
    if missing:
        present = ", ".join(_category_dirs(root)) or "none"
        raise DatasetError(
            f"category {', '.join(missing)} does not exist in {root}; categories there: {present}"
        )


def _require_train(root: Path, categories: Sequence[str]) -> None:
    for category in categories:
        train = root / category / "train"
        if not train.is_dir():
            raise DatasetError(
                f"no train/ folder in {root / category}: expected {train}/good/ with "
                "defect-free images (MVTec AD layout)"
            )


def mvtec_download_is_reachable(timeout_s: float = ONLINE_TIMEOUT_S) -> bool:
    """True when the MVTec AD download host accepts a connection within `timeout_s`."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("ANOMALIB_OFFLINE") == "1":
        return False
    host = MVTEC_DOWNLOAD_HOST
    answered: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    # a daemon thread, because the connect timeout does not cover a stuck DNS lookup
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answered == [True]


def _download_mvtec(root: Path) -> None:
    from anomalib.data.datamodules.image.mvtecad import DOWNLOAD_INFO
    from anomalib.data.utils import download_and_extract

    log.info("downloading MVTec AD (about 5 GB) to %s", root)
    download_and_extract(root, DOWNLOAD_INFO)


def _prepare_mvtec(root: Path, categories: Sequence[str] | None) -> DatasetSpec:
    wanted = tuple(categories) if categories else None
    unknown = [c for c in wanted or () if c not in MVTEC_CATEGORIES]
    if unknown:
        raise DatasetError(
            f"category {', '.join(unknown)} is not an MVTec AD category; "
            f"MVTec AD has: {', '.join(MVTEC_CATEGORIES)}"
        )
    present = [c for c in MVTEC_CATEGORIES if (root / c).is_dir()] if root.is_dir() else []
    missing = [c for c in wanted or MVTEC_CATEGORIES if c not in present]
    if missing and (wanted or not present):
        if not mvtec_download_is_reachable():
            where = (
                f"dataset path {root} does not exist"
                if not root.exists()
                else f"MVTec AD category {', '.join(missing)} not found in {root}"
            )
            raise DatasetError(
                f"{where} and the download host is unreachable (offline). "
                f"Download MVTec AD from {MVTEC_HOME} and "
                f"extract it so that {root}/<category>/train/good/ exists, or pass "
                "data_root pointing at your copy."
            )
        _download_mvtec(root)
        present = [c for c in MVTEC_CATEGORIES if (root / c).is_dir()]
    chosen = wanted or tuple(present)
    _require_categories(root, chosen)
    _require_train(root, chosen)
    for category in chosen:
        if not (root / category / "ground_truth").is_dir():
            raise DatasetError(
                f"no ground_truth/ folder in {root / category}: MVTec AD ships a mask for "
                "every defective test image (anomalib's MVTecAD fails without them); use "
                "kind 'folder' for data without masks"
            )
    return DatasetSpec(kind="mvtec", root=root, categories=tuple(chosen), masks_expected=True)


def _prepare_folder(root: Path, categories: Sequence[str] | None) -> DatasetSpec:
    if (root / "train").is_dir() and not categories:
        # the folder is itself one category
        root, categories = root.parent, (root.name,)
    chosen = tuple(categories) if categories else tuple(_category_dirs(root))
    require_plain_categories(chosen)
    if not chosen:
        raise DatasetError(f"no category folders in {root}: expected {root}/<category>/train/good/")
    _require_categories(root, chosen)
    _require_train(root, chosen)
    masks = all((root / c / "ground_truth").is_dir() for c in chosen)
    if not masks:
        log.info("no ground_truth/ in some categories of %s: pixel metrics not available", root)
    return DatasetSpec(kind="folder", root=root, categories=chosen, masks_expected=masks)


def require_plain_categories(categories: Sequence[str] | None) -> None:
    """Refuse a category that is not a plain folder name (`../x`, `a/b`, `.x`, empty)
    before anything is read or created: it becomes a path under the data and the output."""
    for category in categories or ():
        try:
            plain_name(category, "category")
        except UnsafePath as err:
            raise DatasetError(str(err)) from None


def expand_categories(kind: str, categories: Sequence[str] | None) -> list[str] | None:
    """`["all"]` means every category of the dataset: the 15 of MVTec AD, the demo's,
    or (None) every folder found; anything else is returned as given."""
    if categories is None or [c.lower() for c in categories] != ["all"]:
        return list(categories) if categories is not None else None
    return {"mvtec": list(MVTEC_CATEGORIES), "demo": list(DEMO_CATEGORIES)}.get(kind)


def prepare_dataset(
    kind: str, data_root: str | Path | None, categories: Sequence[str] | None
) -> DatasetSpec:
    """Resolve `kind` + `data_root` + `categories` to a `DatasetSpec`, or raise `DatasetError`.

    `categories=None` means every category found (demo: all of `DEMO_CATEGORIES`);
    `["all"]` means every category of the dataset (see `expand_categories`).
    """
    categories = expand_categories(kind, categories)
    if kind not in ("demo", "mvtec", "folder"):
        raise DatasetError(f"unknown dataset kind {kind!r}: use 'demo', 'mvtec' or 'folder'")
    require_plain_categories(categories)
    if data_root is None and kind == "folder":
        raise DatasetError("dataset kind 'folder' needs data_root: the folder holding categories")
    # absolute, so anomalib (which resolves paths against its own root) sees the same folder
    root = (Path(data_root) if data_root is not None else DEFAULT_ROOTS[kind]).expanduser()
    root = root.absolute()
    if kind == "demo":
        ensure_demo_dataset(root)
        chosen = tuple(categories) if categories else DEMO_CATEGORIES
        _require_categories(root, chosen)
        return DatasetSpec(kind="demo", root=root, categories=chosen, masks_expected=True)
    if kind == "mvtec":
        return _prepare_mvtec(root, categories)
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a folder")
    return _prepare_folder(root, categories)
