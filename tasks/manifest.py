"""The manifest: one row per file of a dataset, with what the validation gate needs to know.

Every file under `<root>/<category>/<split>/...` is a row, masks included (their own rows,
`split="ground_truth"`); files directly in a category folder (MVTec's `readme.txt`,
`license.txt`) and hidden files are not. Image rows link to their mask (`mask_path`) and
mask rows to their image (`image_path`); a link is None when the other file is absent.

Columns: category, split (train/test/ground_truth, or the unknown folder's name), label
("good"/"defect", from the folder), defect_type (the folder under the split), path,
relpath (to the dataset root, POSIX), mask_path, image_path, width, height, mode,
channels, bytes, sha256, readable, read_error, mask_binary (masks only: values are only
0/255 or 0/1), masks_expected (the category must have a mask per defective image).

Reading never raises on a bad file: it records `readable=False` and the error. Files are
hashed and decoded in a thread pool (hashlib and PIL's decoders release the GIL) and the
result is cached by path + size + mtime, so a rerun reads nothing that did not change.

Example:
    >>> manifest = build_manifest(spec, cache_path=Path("data/cache/manifest.json"))
    >>> manifest.groupby(["category", "split"]).size()
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from tasks.results import DatasetSpec

log = logging.getLogger(__name__)

CACHE_VERSION = 1
MASK_SUFFIX = "_mask"
COLUMNS = [
    "category", "split", "label", "defect_type", "path", "relpath", "mask_path", "image_path",
    "width", "height", "mode", "channels", "bytes", "sha256", "readable", "read_error",
    "mask_binary", "masks_expected",
]  # fmt: skip


@dataclass
class FileFacts:
    """What reading one file tells: its content hash and, if it decodes, its image header."""

    bytes: int
    sha256: str | None
    readable: bool
    read_error: str | None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    channels: int | None = None
    mask_binary: bool | None = None


def read_file_facts(path: Path, is_mask: bool) -> FileFacts:
    """Hash `path` and fully decode it (a header alone misses truncated PNGs)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return FileFacts(0, None, False, f"{type(error).__name__}: {error}")
    facts = FileFacts(len(data), hashlib.sha256(data).hexdigest(), True, None)
    if not data:
        facts.readable, facts.read_error = False, "empty file (0 bytes)"
        return facts
    try:
        with Image.open(io.BytesIO(data)) as image:
            facts.width, facts.height = image.size
            facts.mode, facts.channels = image.mode, len(image.getbands())
            image.load()
            if is_mask:
                values = set(np.unique(np.asarray(image)).tolist())
                facts.mask_binary = values <= {0, 255} or values <= {0, 1}
    except UnidentifiedImageError:
        facts.readable, facts.read_error = False, "not an image format PIL can read"
    except Exception as error:  # any decoder failure means "not an image"; keep going
        facts.readable, facts.read_error = False, f"{type(error).__name__}: {error}"
    return facts


def _list_files(spec: DatasetSpec) -> list[dict]:
    rows = []
    for category in spec.categories:
        base = spec.category_dir(category)
        masks_expected = spec.masks_expected or (base / "ground_truth").is_dir()
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            folder = Path(dirpath)
            if folder == base:
                continue
            parts = folder.relative_to(base).parts
            split = parts[0]
            defect_type = parts[1] if len(parts) > 1 else ""
            for name in sorted(f for f in filenames if not f.startswith(".")):
                path = folder / name
                rows.append(
                    {
                        "category": category,
                        "split": split,
                        "label": "good"
                        if defect_type == "good" and split != "ground_truth"
                        else "defect",
                        "defect_type": defect_type,
                        "path": str(path),
                        "relpath": path.relative_to(spec.root).as_posix(),
                        "masks_expected": masks_expected,
                    }
                )
    return rows


def _link_masks(frame: pd.DataFrame) -> pd.DataFrame:
    """Pair test images with ground-truth masks by (category, defect_type, stem)."""
    stem = frame["path"].map(lambda p: Path(p).stem)
    is_mask = frame["split"] == "ground_truth"
    is_test = frame["split"] == "test"
    mask_key = frame["category"] + "/" + frame["defect_type"] + "/"
    masks = pd.Series(
        frame.loc[is_mask, "path"].values,
        index=(mask_key + stem.str.removesuffix(MASK_SUFFIX))[is_mask].values,
    )
    images = pd.Series(frame.loc[is_test, "path"].values, index=(mask_key + stem)[is_test].values)
    masks = masks[~masks.index.duplicated()]
    images = images[~images.index.duplicated()]
    frame["mask_path"] = _none_for_missing((mask_key + stem).where(is_test).map(masks))
    frame["image_path"] = _none_for_missing(
        (mask_key + stem.str.removesuffix(MASK_SUFFIX)).where(is_mask).map(images)
    )
    return frame


def _none_for_missing(column: pd.Series) -> pd.Series:
    """Optional text as an object column holding None (not NaN, which is truthy)."""
    return column.astype(object).where(column.notna(), None)


def _load_cache(cache_path: Path | None) -> dict:
    if cache_path is None or not cache_path.is_file():
        return {}
    try:
        cached = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        log.warning("manifest cache %s unreadable; rebuilding it", cache_path)
        return {}
    return cached.get("files", {}) if cached.get("version") == CACHE_VERSION else {}


def _save_cache(cache_path: Path, entries: dict) -> None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename: a concurrent reader sees the old or the new cache, never half
    fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix=f".{cache_path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump({"version": CACHE_VERSION, "files": entries}, handle)
    os.replace(tmp, cache_path)


def _cache_key(path: Path, is_mask: bool) -> tuple[str, list]:
    try:
        stat = path.stat()
        signature = [stat.st_size, stat.st_mtime_ns, is_mask]
    except OSError:
        signature = [None, None, is_mask]
    return str(path.resolve()), signature


def build_manifest(
    spec: DatasetSpec, cache_path: Path | None = None, workers: int | None = None
) -> pd.DataFrame:
    """One row per file of `spec` (see the module docstring for the columns).

    `cache_path`: a JSON file of earlier reads, or a folder to hold `manifest.json`
    (None: no cache); `workers`: threads
    (default: 2 per CPU, at most 16).
    """
    if cache_path is not None and Path(cache_path).is_dir():
        cache_path = Path(cache_path) / "manifest.json"
    rows = _list_files(spec)
    cache = _load_cache(cache_path)
    keys = [_cache_key(Path(r["path"]), r["split"] == "ground_truth") for r in rows]
    facts: list[FileFacts | None] = []
    for key, signature in keys:
        hit = cache.get(key)
        ok = hit is not None and hit["signature"] == signature and signature[0] is not None
        facts.append(FileFacts(**hit["facts"]) if ok else None)
    todo = [i for i, f in enumerate(facts) if f is None]
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        read = pool.map(
            lambda i: read_file_facts(Path(rows[i]["path"]), rows[i]["split"] == "ground_truth"),
            todo,
        )
        for i, result in zip(todo, read, strict=True):
            facts[i] = result
    log.info("manifest of %s: %d files, %d read, %d cached", spec.root, len(rows), len(todo),
             len(rows) - len(todo))  # fmt: skip
    if cache_path is not None and todo:
        fresh = {
            key: {"signature": sig, "facts": asdict(f)}
            for (key, sig), f in zip(keys, facts, strict=True)
        }
        _save_cache(Path(cache_path), cache | fresh)
    frame = pd.DataFrame(
        [row | asdict(f) for row, f in zip(rows, facts, strict=True)],
        columns=[c for c in COLUMNS if c not in ("mask_path", "image_path")],
    )
    frame = _link_masks(frame)
    frame["read_error"] = _none_for_missing(frame["read_error"])
    return frame.astype(
        {
            **dict.fromkeys(
                ["category", "split", "label", "defect_type", "path", "relpath"], "str"
            ),
            "mode": "str",
            "sha256": "str",
            "width": "Int64",
            "height": "Int64",
            "channels": "Int64",
            "bytes": "int64",
            "readable": bool,
            "mask_binary": "boolean",
            "masks_expected": bool,
        }
    )[COLUMNS]
