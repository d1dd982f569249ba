"""The dataset layer: resolve a dataset name to a checked `DatasetSpec` in MVTec AD layout.

Three kinds:
- `demo`: generated on first use (see `tasks.data.demo_data`); not MVTec AD.
- `mvtec`: MVTec AD (Bergmann et al., CVPR 2019) under `data_root` (default: the asset
  cache's `datasets/mvtec_ad`, see `tasks.assets`); a wanted category that is absent is
  fetched through the asset layer (anomalib's URL and hash, `fetch_asset(mvtec_ad(...))`)
  where the profile's `assets.download` allows it and the source answers within its
  timeout, otherwise a `DatasetError` says what is missing, why, and how to get it.
  Never hangs offline.
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
from collections.abc import Sequence
from pathlib import Path

from tasks.assets import ArchiveAsset, AssetUnavailableError, fetch_asset, fetch_command, mvtec_ad
from tasks.assets.archives import MVTEC_FOLDER
from tasks.data.demo_data import DEMO_CATEGORIES, ensure_demo_dataset
from tasks.results.types import DatasetError, DatasetSpec
from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.paths import UnsafePath, plain_name

log = logging.getLogger(__name__)


# anomalib.data.datasets.image.mvtecad.CATEGORIES, repeated to avoid importing torch here.
MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
DEFAULT_DEMO_ROOT = Path("data/demo")
MVTEC_HOME = "https://www.mvtec.com/company/research/datasets/mvtec-ad"


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


def mvtec_root(data_root: str | Path | None, assets: AssetSettings) -> Path:
    """Where MVTec AD is read: `data_root`, else `datasets/mvtec_ad` in the asset cache
    (`assets.dir` or $ANOMALY_BENCHMARK_ASSETS_DIR, else `data/`), absolute."""
    if data_root is not None:
        return Path(data_root).expanduser().absolute()
    return assets.datasets_dir() / MVTEC_FOLDER


def dataset_to_fetch(
    kind: str | None,
    data_root: str | Path | None,
    categories: Sequence[str] | None,
    assets: AssetSettings,
) -> ArchiveAsset | None:
    """The asset to fetch before `kind` can be read: MVTec AD when a wanted category
    folder is absent (no category named: when none is there), else None. Category folders
    that are there are never fetched over: the gate checks their layout. Unknown
    categories are the gate's to refuse, so they give None here too."""
    if kind != "mvtec":
        return None
    wanted = expand_categories(kind, categories)
    if any(c not in MVTEC_CATEGORIES for c in wanted or ()):
        return None
    root = mvtec_root(data_root, assets)
    present = [c for c in MVTEC_CATEGORIES if (root / c).is_dir()] if root.is_dir() else []
    absent = [c for c in wanted or MVTEC_CATEGORIES if c not in present]
    if not absent or not (wanted or not present):
        return None
    return mvtec_ad(assets, root, wanted)


def _prepare_mvtec(
    root: Path, categories: Sequence[str] | None, assets: AssetSettings
) -> DatasetSpec:
    wanted = tuple(categories) if categories else None
    unknown = [c for c in wanted or () if c not in MVTEC_CATEGORIES]
    if unknown:
        raise DatasetError(
            f"category {', '.join(unknown)} is not an MVTec AD category; "
            f"MVTec AD has: {', '.join(MVTEC_CATEGORIES)}"
        )
    asset = dataset_to_fetch("mvtec", root, wanted, assets)
    if asset is not None:
        try:
            fetch_asset(asset, assets)
        except AssetUnavailableError as err:
            raise DatasetError(_mvtec_missing(root, wanted, err, assets)) from None
    present = [c for c in MVTEC_CATEGORIES if (root / c).is_dir()] if root.is_dir() else []
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


def _mvtec_missing(
    root: Path,
    wanted: Sequence[str] | None,
    err: AssetUnavailableError,
    assets: AssetSettings,
) -> str:
    """What is missing, why it could not be fetched, and the two ways to get it."""
    if not root.exists():
        where = f"dataset path {root} does not exist"
    else:
        absent = [c for c in wanted or MVTEC_CATEGORIES if not (root / c).is_dir()]
        where = f"MVTec AD category {', '.join(absent)} not found in {root}"
    command = fetch_command(None, [], "mvtec", wanted, assets, data_root=root)
    return (
        f"{where}, and it could not be fetched: {err.reason}. Fetch it with:\n  {command}\n"
        f"or download MVTec AD from {MVTEC_HOME} and extract it so that "
        f"{root}/<category>/train/good/ exists, or pass data_root pointing at your copy."
    )


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
    kind: str,
    data_root: str | Path | None,
    categories: Sequence[str] | None,
    assets: AssetSettings | None = None,
) -> DatasetSpec:
    """Resolve `kind` + `data_root` + `categories` to a `DatasetSpec`, or raise `DatasetError`.

    `categories=None` means every category found (demo: all of `DEMO_CATEGORIES`);
    `["all"]` means every category of the dataset (see `expand_categories`). `assets`
    (the profile's; default `AssetSettings()`) says whether MVTec AD may be fetched.
    """
    assets = assets or AssetSettings()
    categories = expand_categories(kind, categories)
    if kind not in ("demo", "mvtec", "folder"):
        raise DatasetError(f"unknown dataset kind {kind!r}: use 'demo', 'mvtec' or 'folder'")
    require_plain_categories(categories)
    if data_root is None and kind == "folder":
        raise DatasetError("dataset kind 'folder' needs data_root: the folder holding categories")
    if kind == "mvtec":
        return _prepare_mvtec(mvtec_root(data_root, assets), categories, assets)
    # absolute, so anomalib (which resolves paths against its own root) sees the same folder
    root = (Path(data_root) if data_root is not None else DEFAULT_DEMO_ROOT).expanduser()
    root = root.absolute()
    if kind == "demo":
        ensure_demo_dataset(root)
        chosen = tuple(categories) if categories else DEMO_CATEGORIES
        _require_categories(root, chosen)
        return DatasetSpec(kind="demo", root=root, categories=chosen, masks_expected=True)
    if not root.exists():
        raise DatasetError(f"dataset path {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset path {root} is not a folder")
    return _prepare_folder(root, categories)
