"""The manifest: one row per directory entry of a dataset, with what the gate needs to know.

It lists every entry anomalib's `Folder` datamodule could glob under
`<root>/<category>/<split>/...`, so the gate judges exactly what training would read:
hidden files (macOS `._000.png`), every extension, symlinks, FIFOs, sockets and devices,
nested folders and names of any characters are rows, and the rules in
`checks.manifest_schema` refuse what training must not see. Masks are rows of their own
(`split="ground_truth"`). Entries directly in a category folder (MVTec's `readme.txt`,
hidden folders) are not rows: anomalib never reads them; a split folder that is a symlink
is a row (and refused), never silently "0 images".

Columns: category, split (train/test/ground_truth, or the unknown folder's name), label
("good"/"defect", from the folder), defect_type (the folder under the split), path,
relpath (to the dataset root, POSIX), file_type ("file", "symlink", "fifo", "socket",
"char_device", "block_device", "empty_folder", "unreadable_folder"), mask_path,
image_path, width, height, mode, channels, bytes, sha256, readable, read_error,
mask_binary (masks only: values are only 0/255 or 0/1), mask_empty (masks only: no
defect pixel), masks_expected (the category must have a mask per defective image).

Reading never raises on a bad file and never blocks: only regular files are opened (an
`lstat` decides, and the open is non-blocking and does not follow links), each read is
capped at `MAX_FILE_BYTES` and `READ_TIMEOUT_S`, and a failure is recorded as
`readable=False` with the reason. Files are hashed and decoded in a thread pool (hashlib
and PIL's decoders release the GIL) and the result is cached by path + size + mtime, so a
rerun reads nothing that did not change.

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
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from checks.manifest_schema import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    VALIDATION_CATEGORY,
    VALIDATION_SPLIT,
)
from tasks.results.types import DatasetError, DatasetSpec
from tasks.runtime.writes import write_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 2
MASK_SUFFIX = "_mask"
READ_TIMEOUT_S = 30.0  # one file's read and decode; a slow network share, not a normal disk
CHUNK_BYTES = 1 << 20
COLUMNS = [
    "category", "split", "label", "defect_type", "path", "relpath", "file_type", "mask_path",
    "image_path", "width", "height", "mode", "channels", "bytes", "sha256", "readable",
    "read_error", "mask_binary", "mask_empty", "masks_expected",
]  # fmt: skip
_TYPES = (
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "char_device"),
    (stat.S_ISBLK, "block_device"),
)
_LEAF_TYPES = ("file", "fifo", "socket", "char_device", "block_device", "other")


def file_type(mode: int) -> str:
    """The kind of a directory entry from its `lstat` mode ("file" = a regular file)."""
    return next((name for test, name in _TYPES if test(mode)), "other")


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
    mask_empty: bool | None = None


class _ReadTooSlow(OSError):
    pass


def _read_capped(path: Path) -> tuple[bytes | None, int, str | None]:
    """(content, size, error): a regular file's bytes, read without following a link or
    blocking on a FIFO, refused unread above `MAX_FILE_BYTES`, abandoned after
    `READ_TIMEOUT_S`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced since it was listed
            return None, info.st_size, f"{file_type(info.st_mode)}: not a regular file, not read"
        if info.st_size > MAX_FILE_BYTES:
            return None, info.st_size, f"{info.st_size} bytes, over the cap: not read"
        deadline = time.monotonic() + READ_TIMEOUT_S
        chunks, total = [], 0
        while chunk := handle.read(CHUNK_BYTES):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                return None, total, f"grew over {MAX_FILE_BYTES} bytes while read: not read"
            if time.monotonic() > deadline:
                raise _ReadTooSlow(f"read took over {READ_TIMEOUT_S:g} s")
    data = b"".join(chunks)
    return data, len(data), None


def read_file_facts(path: Path, is_mask: bool) -> FileFacts:
    """Hash `path` and fully decode it (a header alone misses truncated PNGs).

    Only a regular file is read; anything else is recorded as not readable."""
    try:
        data, size, refused = _read_capped(path)
    except OSError as error:
        return FileFacts(0, None, False, f"{type(error).__name__}: {error}")
    if data is None:
        return FileFacts(size, None, False, refused)
    facts = FileFacts(len(data), hashlib.sha256(data).hexdigest(), True, None)
    if not data:
        facts.readable, facts.read_error = False, "empty file (0 bytes)"
        return facts
    try:
        with Image.open(io.BytesIO(data)) as image:
            facts.width, facts.height = image.size
            facts.mode, facts.channels = image.mode, len(image.getbands())
            if facts.width * facts.height > MAX_PIXELS:
                facts.readable = False
                facts.read_error = f"{facts.width}x{facts.height} pixels, over the cap: not decoded"
                return facts
            image.load()
            if is_mask:
                values = set(np.unique(np.asarray(image)).tolist())
                facts.mask_binary = values <= {0, 255} or values <= {0, 1}
                facts.mask_empty = values <= {0}
    except UnidentifiedImageError:
        facts.readable, facts.read_error = False, "not an image format PIL can read"
    except Exception as error:  # any decoder failure means "not an image"; keep going
        facts.readable, facts.read_error = False, f"{type(error).__name__}: {error}"
    return facts


def _unread_facts(path: Path, kind: str) -> FileFacts:
    """Facts of an entry that is not opened: a symlink, FIFO, socket, device..."""
    try:
        size = os.lstat(path).st_size
    except OSError:
        size = 0
    if kind == "symlink":
        try:
            target = os.readlink(path)
        except OSError as error:
            target = f"? ({error})"
        return FileFacts(size, None, False, f"symlink to {target}: not followed")
    return FileFacts(size, None, False, f"{kind.replace('_', ' ')}: not a regular file, not read")


def _row(spec: DatasetSpec, category: str, path: Path, kind: str, masks: bool) -> dict:
    parts = path.relative_to(spec.category_dir(category)).parts
    split = parts[0]
    # a file's class is its folder; a linked or unreadable folder's class is its own name
    in_class = len(parts) > 2 or (len(parts) == 2 and kind not in _LEAF_TYPES)
    defect_type = parts[1] if in_class else ""
    return {
        "category": category,
        "split": split,
        "label": "good" if defect_type == "good" and split != "ground_truth" else "defect",
        "defect_type": defect_type,
        "path": str(path),
        "relpath": path.relative_to(spec.root).as_posix(),
        "file_type": kind,
        "masks_expected": masks,
    }


def _entries(folder: Path) -> list[tuple[Path, str]]:
    """(path, kind) of every entry in `folder`, by `lstat`: nothing is followed or opened."""
    found = []
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                kind = file_type(entry.stat(follow_symlinks=False).st_mode)
            except OSError:
                kind = "other"
            found.append((Path(entry.path), kind))
    return sorted(found)


def _walk(folder: Path) -> list[tuple[Path, str]]:
    """(path, kind) of every entry under `folder` except real folders, which are entered;
    a folder that cannot be listed is an entry of kind "unreadable_folder", one with
    nothing in it an "empty_folder" (anomalib stops on an empty class folder)."""
    found: list[tuple[Path, str]] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            inside = _entries(current)
        except OSError:
            found.append((current, "unreadable_folder"))
            continue
        if not inside:
            found.append((current, "empty_folder"))
        for path, kind in inside:
            if kind == "folder":
                pending.append(path)
            else:
                found.append((path, kind))
    return found


def _list_category(spec: DatasetSpec, category: str) -> list[dict]:
    base = spec.category_dir(category)
    masks = spec.masks_expected or (base / "ground_truth").is_dir()
    found: list[tuple[Path, str]] = []
    for path, kind in _entries(base):
        if path.name.startswith("."):
            continue  # hidden folders beside the splits: anomalib never reads them
        if kind == "folder":
            found.extend(_walk(path))
        elif kind == "symlink" and path.is_dir():
            found.append((path, kind))  # e.g. a linked train/
    rows = [_row(spec, category, path, kind, masks) for path, kind in found]
    return sorted(rows, key=lambda row: row["path"])


def _list_files(spec: DatasetSpec) -> list[dict]:
    return [row for category in spec.categories for row in _list_category(spec, category)]


def _list_validation_directory(directory: Path) -> list[dict]:
    """Rows for a validation folder: `<directory>/good/...` and `<directory>/<defect>/...`.

    Every entry is a row, hidden and linked ones included: the validation datamodule takes
    every folder in it as a class."""
    rows = []
    for path, kind in _walk(directory):
        parts = path.relative_to(directory).parts
        in_class = len(parts) > 1 or kind not in _LEAF_TYPES
        defect_type = parts[0] if in_class else ""
        rows.append(
            {
                "category": VALIDATION_CATEGORY,
                "split": VALIDATION_SPLIT,
                "label": "good" if defect_type == "good" else "defect",
                "defect_type": defect_type,
                "path": str(path),
                "relpath": "/".join((VALIDATION_CATEGORY, VALIDATION_SPLIT, *parts)),
                "file_type": kind,
                "masks_expected": False,
            }
        )
    return sorted(rows, key=lambda row: row["path"])


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
    # write-then-rename: a concurrent reader sees the old or the new cache, never half; a
    # full or read-only disk fails naming the file, and leaves no temporary file
    cache = json.dumps({"version": CACHE_VERSION, "files": entries})
    write_atomic(cache_path, cache, "manifest cache")


def _cache_key(path: Path, is_mask: bool) -> tuple[str, list]:
    try:
        info = path.stat()
        signature = [info.st_size, info.st_mtime_ns, is_mask]
    except OSError:
        signature = [None, None, is_mask]
    return str(path.resolve()), signature


def _read_all(rows: list[dict], todo: list[int], workers: int) -> dict[int, FileFacts]:
    """Read `rows[i]` for i in `todo` in a thread pool; a read that outlives
    `READ_TIMEOUT_S` is recorded as such and left behind, never waited for."""
    pool = ThreadPoolExecutor(max_workers=workers)
    futures = {
        i: pool.submit(read_file_facts, Path(rows[i]["path"]), rows[i]["split"] == "ground_truth")
        for i in todo
    }
    facts = {}
    for i, future in futures.items():
        try:
            facts[i] = future.result(timeout=READ_TIMEOUT_S)
        except FutureTimeout:
            facts[i] = FileFacts(0, None, False, f"read took over {READ_TIMEOUT_S:g} s: abandoned")
    pool.shutdown(wait=False, cancel_futures=True)
    return facts


def build_manifest(
    spec: DatasetSpec, cache_path: Path | None = None, workers: int | None = None
) -> pd.DataFrame:
    """One row per entry of `spec` (see the module docstring for the columns).

    `cache_path`: a JSON file of earlier reads, or a folder to hold `manifest.json`
    (None: no cache); `workers`: threads (default: 2 per CPU, at most 16).
    """
    return _manifest(_list_files(spec), str(spec.root), cache_path, workers)


def build_validation_manifest(
    directory: str | Path, cache_path: Path | None = None, workers: int | None = None
) -> pd.DataFrame:
    """The manifest of a profile's `validation.directory` (good/ and defect folders), as
    rows of category `VALIDATION_CATEGORY` and split `VALIDATION_SPLIT`, so the gate's file
    rules and its overlap check against test/ judge it like the dataset."""
    directory = Path(directory).expanduser().absolute()
    if not directory.is_dir():
        raise DatasetError(
            f"validation.directory {directory} is not a folder: expected good/ and "
            "defect folders in it"
        )
    return _manifest(_list_validation_directory(directory), str(directory), cache_path, workers)


def _manifest(
    rows: list[dict], where: str, cache_path: Path | None, workers: int | None
) -> pd.DataFrame:
    if cache_path is not None and Path(cache_path).is_dir():
        cache_path = Path(cache_path) / "manifest.json"
    cache = _load_cache(cache_path)
    facts: list[FileFacts | None] = []
    keys: dict[int, tuple[str, list]] = {}
    for i, row in enumerate(rows):
        path = Path(row["path"])
        if row["file_type"] != "file":
            facts.append(_unread_facts(path, row["file_type"]))
            continue
        keys[i] = key, signature = _cache_key(path, row["split"] == "ground_truth")
        hit = cache.get(key)
        ok = hit is not None and hit["signature"] == signature and signature[0] is not None
        facts.append(FileFacts(**hit["facts"]) if ok else None)
    todo = [i for i, f in enumerate(facts) if f is None]
    fresh = _read_all(rows, todo, workers or min(16, 2 * (os.cpu_count() or 1)))
    for i, result in fresh.items():
        facts[i] = result
    log.info("manifest of %s: %d entries, %d read, %d cached", where, len(rows), len(todo),
             len(keys) - len(todo))  # fmt: skip
    if cache_path is not None and todo:
        timed_out = {i for i, f in fresh.items() if "abandoned" in (f.read_error or "")}
        entries = {
            keys[i][0]: {"signature": keys[i][1], "facts": asdict(facts[i])}
            for i in keys
            if i not in timed_out
        }
        _save_cache(Path(cache_path), cache | entries)
    frame = pd.DataFrame(
        [row | asdict(f) for row, f in zip(rows, facts, strict=True)],
        columns=[c for c in COLUMNS if c not in ("mask_path", "image_path")],
    )
    frame = _link_masks(frame)
    frame["read_error"] = _none_for_missing(frame["read_error"])
    return frame.astype(
        {
            **dict.fromkeys(
                ["category", "split", "label", "defect_type", "path", "relpath", "file_type"],
                "str",
            ),
            "mode": "str",
            "sha256": "str",
            "width": "Int64",
            "height": "Int64",
            "channels": "Int64",
            "bytes": "int64",
            "readable": bool,
            "mask_binary": "boolean",
            "mask_empty": "boolean",
            "masks_expected": bool,
        }
    )[COLUMNS]
