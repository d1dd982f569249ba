"""How long the validation gate takes on 1,000 images of 256 px (goal: at most 15 s on 2 cores).

Builds a synthetic MVTec-layout dataset in a temporary folder (not timed): 4 categories
of 160 train/good, 30 test/good and 60 defective test images with their masks, RGB,
256x256. Then times, in a fresh process so imports count, `build_manifest` with a cold
cache (hashing and full decoding of every file) plus `validate_manifest` (pandera and the
Great Expectations suite, GX import included), and the rerun with the cache warm.

Usage (`--markdown` also writes the figures into docs/performance.md):
    python -m benchmarks.validation_speed [--workers N] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CATEGORIES = ("alpha", "beta", "gamma", "delta")
SIZE = 256
N_TRAIN, N_TEST_GOOD, N_DEFECT = 160, 30, 60  # x 4 categories = 1,000 images (+240 masks)


def _texture(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.integers(60, 200, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    image = np.kron(coarse, np.ones((8, 8, 1), np.uint8))
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def build_images(root: Path) -> int:
    rng = np.random.default_rng(0)
    written = 0
    for category in CATEGORIES:
        base = root / category
        folders = [("train/good", N_TRAIN), ("test/good", N_TEST_GOOD), ("test/crack", N_DEFECT)]
        for folder, count in folders:
            (base / folder).mkdir(parents=True)
            for i in range(count):
                image = _texture(rng)
                if folder == "test/crack":
                    mask = np.zeros((SIZE, SIZE), np.uint8)
                    mask[100:140, 50:200] = 255
                    image[mask > 0] = 250
                    (base / "ground_truth/crack").mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(base / f"ground_truth/crack/{i:03d}_mask.png")
                Image.fromarray(image).save(base / folder / f"{i:03d}.png")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None)
    from benchmarks.performance import Table, add_markdown_option, publish

    add_markdown_option(parser)
    args = parser.parse_args()
    workers = args.workers

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "data", Path(tmp) / "manifest_cache.json"
        start = time.perf_counter()
        n_images = build_images(root)
        print(f"built {n_images} images of {SIZE} px in {time.perf_counter() - start:.1f} s "
              "(not timed)")  # fmt: skip

        start = time.perf_counter()
        from tasks.results.types import DatasetSpec
        from tasks.validation.manifest import build_manifest
        from tasks.validation.rules import validate_manifest

        spec = DatasetSpec(kind="folder", root=root, categories=CATEGORIES)
        imports = time.perf_counter() - start
        start = time.perf_counter()
        manifest = build_manifest(spec, cache_path=cache, workers=workers)
        cold_manifest = time.perf_counter() - start
        start = time.perf_counter()
        report = validate_manifest(manifest, spec)
        cold_validate = time.perf_counter() - start
        assert report.passed, report.summary()
        cold = imports + cold_manifest + cold_validate

        start = time.perf_counter()
        manifest = build_manifest(spec, cache_path=cache, workers=workers)
        warm_manifest = time.perf_counter() - start
        start = time.perf_counter()
        validate_manifest(manifest, spec)
        warm_validate = time.perf_counter() - start

    mb = manifest["bytes"].sum() / 1e6
    print(f"files: {len(manifest)} ({n_images} images + masks, {mb:.0f} MB); "
          f"cpus: {os.cpu_count()}; workers: {workers or 'default'}")  # fmt: skip
    print(f"cold: imports {imports:.2f} s + manifest {cold_manifest:.2f} s "
          f"+ validate {cold_validate:.2f} s = {cold:.2f} s (goal <= 15 s)")  # fmt: skip
    print(f"cached rerun: manifest {warm_manifest:.2f} s + validate {warm_validate:.2f} s "
          f"= {warm_manifest + warm_validate:.2f} s")  # fmt: skip
    print(f"rules: {len(report.rules)}, passed: {report.passed}")
    table = Table(
        "validation_speed",
        f"The validation gate on {n_images} images of {SIZE} px ({len(manifest)} files with "
        f"the masks, {mb:.0f} MB; workers: {workers or 'default'})",
        ["run", "imports s", "manifest s", "pandera + GX s", "total s"],
    )
    table.add("cold cache", round(imports, 2), round(cold_manifest, 2), round(cold_validate, 2),
              round(cold, 2))  # fmt: skip
    table.add("cached rerun", "", round(warm_manifest, 2), round(warm_validate, 2),
              round(warm_manifest + warm_validate, 2))  # fmt: skip
    table.notes.append(f"{len(report.rules)} rules, all passed: {report.passed}")
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
