"""The demo dataset: real texture photos with synthetic defects, in MVTec AD's layout.

Not MVTec AD. The textures are the photos bundled with scikit-image
(`skimage.data.brick()`, `grass()`, `gravel()`, 512x512 grayscale) plus a procedural
grid; the defects (scratch, crack, hole, stain, warp, glue blob, broken grid line) are
painted on with a binary 0/255 ground-truth mask each, in the spirit of the synthetic
anomalies of DRAEM (Zavrtanik et al., ICCV 2021). Everything is drawn from fixed seeds,
so the same generator version writes the same bytes and the dataset hash is stable.

Layout per category (as MVTec AD): `train/good/000.png`, `test/good/000.png`,
`test/<defect>/000.png`, `ground_truth/<defect>/000_mask.png`.

Example:
    >>> root = ensure_demo_dataset(Path("data/demo"))  # generated once, then reused
    >>> sorted(p.name for p in root.iterdir() if p.is_dir())[:2]
    ['demo_brick', 'demo_grass']
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

from tasks.results.types import DatasetError

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
STAMP_FILE = ".demo_generator_version"
IMAGE_SIZE = 256
N_TRAIN = 24
N_TEST_GOOD = 8
N_PER_DEFECT = 4  # three defect kinds per category: 12 defective test images

DEFECTS_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    "demo_brick": ("crack", "hole", "stain"),
    "demo_grass": ("scratch", "stain", "glue"),
    "demo_gravel": ("hole", "warp", "glue"),
    "demo_grid": ("broken_line", "scratch", "glue"),
}
DEMO_CATEGORIES: tuple[str, ...] = tuple(DEFECTS_BY_CATEGORY)

README = """\
Demo dataset for the anomaly-detection benchmark. THIS IS NOT MVTec AD.

Textures: photos bundled with scikit-image (brick, grass, gravel) and a procedural grid,
cropped, flipped and shifted to {size}x{size} px. Defects are synthetic (painted by
tasks/demo_data.py, generator version {version}); each defective test image has a binary
0/255 mask in ground_truth/<defect>/<stem>_mask.png. Layout follows MVTec AD so the same
code reads both. Regenerated automatically when the generator version changes.
"""


def _procedural_grid(rng: np.random.Generator) -> np.ndarray:
    """A 512x512 wire grid: dark lines on a light, slightly mottled background."""
    size, period, width = 512, 32, 5
    mottling = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 6)
    img = 175 + 60 * mottling / (np.abs(mottling).max() + 1e-9)
    idx = np.arange(size)
    on_line = (idx % period) < width
    img[on_line, :] = 60
    img[:, on_line] = 60
    return np.clip(img, 0, 255).astype(np.uint8)


def _texture(category: str) -> np.ndarray:
    if category == "demo_grid":
        return _procedural_grid(np.random.default_rng(1234))
    photo = {"demo_brick": skdata.brick, "demo_grass": skdata.grass, "demo_gravel": skdata.gravel}
    return photo[category]()


def _crop(texture: np.ndarray, rng: np.random.Generator, grid: bool) -> np.ndarray:
    """A random crop, flip and mild sensor noise: train variety, every file unique."""
    span = texture.shape[0] - IMAGE_SIZE
    if grid:  # keep the lattice aligned; only small shifts, as a camera would
        y, x = (rng.integers(0, 8, 2) + 32 * rng.integers(0, span // 32, 2)).tolist()
    else:
        y, x = rng.integers(0, span, 2).tolist()
    patch = texture[y : y + IMAGE_SIZE, x : x + IMAGE_SIZE].astype(np.float32)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5 and not grid:
        patch = patch[::-1, :]
    patch = patch + rng.normal(0, 2.0, patch.shape)
    return np.clip(patch, 0, 255).astype(np.uint8)


def _blob_mask(rng: np.random.Generator, radius: tuple[int, int]) -> np.ndarray:
    """An irregular blob: a few overlapping ellipses near a random centre."""
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    cy, cx = rng.integers(60, IMAGE_SIZE - 60, 2)
    for _ in range(3):
        ry, rx = rng.integers(*radius, 2)
        oy, ox = rng.integers(-radius[0] // 2, radius[0] // 2 + 1, 2)
        rr, cc = draw.ellipse(cy + oy, cx + ox, ry, rx, shape=mask.shape)
        mask[rr, cc] = True
    return mask


def _polyline_mask(rng: np.random.Generator, steps: int, jitter: float, width: int) -> np.ndarray:
    """A random walk line (scratch when straight-ish, crack when jagged)."""
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    y, x = rng.uniform(60, IMAGE_SIZE - 60, 2)
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(steps):
        angle += rng.normal(0, jitter)
        ny, nx = y + 8 * np.sin(angle), x + 8 * np.cos(angle)
        rr, cc = draw.line(int(y), int(x), int(ny), int(nx))
        keep = (rr >= 0) & (rr < IMAGE_SIZE) & (cc >= 0) & (cc < IMAGE_SIZE)
        mask[rr[keep], cc[keep]] = True
        y, x = ny, nx
    return ndimage.binary_dilation(mask, iterations=width)


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = _polyline_mask(rng, steps=14, jitter=0.08, width=1)
    out = img.astype(np.float32)
    out[mask] = 245.0
    return out, mask


def _crack(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = _polyline_mask(rng, steps=16, jitter=0.6, width=2)
    out = img.astype(np.float32)
    out[mask] = 10.0
    return out, mask


def _hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = _blob_mask(rng, (10, 18))
    depth = ndimage.distance_transform_edt(mask)
    out = img.astype(np.float32)
    out[mask] = 5.0 + 25.0 * np.exp(-depth[mask] / 4.0)
    return out, mask


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = _blob_mask(rng, (16, 28))
    shift = 90.0 if img.mean() < 128 else -90.0
    out = img.astype(np.float32)
    out[mask] += shift
    return out, mask


def _glue(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, glossy blob that hides the texture under it."""
    mask = _blob_mask(rng, (12, 22))
    out = img.astype(np.float32)
    smooth = ndimage.gaussian_filter(out, 6)
    out[mask] = 0.3 * smooth[mask] + 0.7 * 235.0
    return out, mask


def _warp(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fold: a swirl of the texture inside a disk, with a shading ridge across it."""
    cy, cx = rng.integers(70, IMAGE_SIZE - 70, 2)
    radius = int(rng.integers(28, 40))
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    mask = dist < radius
    twist = 2.5 * np.clip(1 - dist / radius, 0, None) ** 2
    cos, sin = np.cos(twist), np.sin(twist)
    src_y, src_x = cy + cos * dy - sin * dx, cx + sin * dy + cos * dx
    out = ndimage.map_coordinates(img.astype(np.float32), [src_y, src_x], order=1, mode="reflect")
    ridge = np.exp(-(((dy * 0.7 + dx * 0.7) / 5.0) ** 2))
    out[mask] += (70.0 * ridge)[mask]
    out[~mask] = img[~mask]
    return out, mask


def _broken_line(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A grid wire cut: a stretch of a dark line painted over with background."""
    dark = img < 110
    rows, cols = dark.mean(axis=1) > 0.6, dark.mean(axis=0) > 0.6
    vertical = bool(rng.random() < 0.5)
    lines = np.flatnonzero(cols if vertical else rows)
    lines = lines[(lines > 40) & (lines < IMAGE_SIZE - 40)]
    centre = int(rng.choice(lines))
    start = int(rng.integers(40, IMAGE_SIZE - 100))
    mask = np.zeros_like(dark)
    band = slice(centre - 5, centre + 6)
    stretch = slice(start, start + int(rng.integers(30, 60)))
    if vertical:
        mask[stretch, band] = True
    else:
        mask[band, stretch] = True
    out = img.astype(np.float32)
    out[mask] = 185.0 + rng.normal(0, 4, int(mask.sum()))
    return out, mask


DEFECT_PAINTERS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "glue": _glue,
    "warp": _warp,
    "broken_line": _broken_line,
}


def apply_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of `kind` on a uint8 grayscale image; return (image, 0/255 mask)."""
    painted, mask = DEFECT_PAINTERS[kind](image, rng)
    out = np.where(mask, np.clip(painted, 0, 255), image).astype(np.uint8)
    return out, (mask.astype(np.uint8) * 255)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path, optimize=False, compress_level=6)


def write_category(root: Path, category: str) -> None:
    """Write one category's train, test and ground-truth files under `root/category`."""
    texture = _texture(category)
    grid = category == "demo_grid"
    seed = DEMO_CATEGORIES.index(category)
    rng = np.random.default_rng([seed, 0])
    base = root / category
    for i in range(N_TRAIN):
        _save(_crop(texture, rng, grid), base / "train" / "good" / f"{i:03d}.png")
    rng = np.random.default_rng([seed, 1])
    for i in range(N_TEST_GOOD):
        _save(_crop(texture, rng, grid), base / "test" / "good" / f"{i:03d}.png")
    for k, kind in enumerate(DEFECTS_BY_CATEGORY[category]):
        rng = np.random.default_rng([seed, 2 + k])
        for i in range(N_PER_DEFECT):
            image, mask = apply_defect(_crop(texture, rng, grid), kind, rng)
            _save(image, base / "test" / kind / f"{i:03d}.png")
            _save(mask, base / "ground_truth" / kind / f"{i:03d}_mask.png")


def is_current(root: Path) -> bool:
    stamp = root / STAMP_FILE
    return stamp.is_file() and stamp.read_text().strip() == GENERATOR_VERSION


def ensure_demo_dataset(root: Path) -> Path:
    """Generate the demo dataset under `root` unless the current version is already there.

    Writes into a sibling temporary folder and renames it into place, so an interrupted
    run never leaves a half-written dataset that looks complete. An older version (by
    its stamp) is replaced; a non-empty folder without our stamp is never touched.
    """
    root = Path(root)
    if is_current(root):
        return root
    if root.exists() and any(root.iterdir()) and not (root / STAMP_FILE).is_file():
        raise DatasetError(
            f"{root} exists and is not a demo dataset (no {STAMP_FILE}); "
            "choose an empty or new folder for the demo data"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    staging.chmod(0o755)
    try:
        for category in DEMO_CATEGORIES:
            write_category(staging, category)
        (staging / "README.txt").write_text(
            README.format(size=IMAGE_SIZE, version=GENERATOR_VERSION)
        )
        (staging / STAMP_FILE).write_text(GENERATOR_VERSION + "\n")
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(staging, root)
        except OSError:
            if not is_current(root):  # another process won the race with the same data
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("demo dataset v%s written to %s", GENERATOR_VERSION, root)
    return root
