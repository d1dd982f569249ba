"""Image file -> model input: the inference paths' decoder against OpenCV's.

Every inference path starts from the image file, so on real MVTec AD images (700 to
1024 px PNGs) decoding is a large share of the batch-1 latency. Prints, per category,
the median time over its test images of `tasks.data.decode.decode` (libspng for colour
PNGs, OpenCV for the rest, then the models' resize) and of the same with OpenCV's
`imread` for every file, and checks that both give the same pixels.

Run (`--markdown` also writes the table into docs/performance.md):
    python -m benchmarks.decode_speed --data-root ../shared/datasets/mvtec_ad_subset
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.performance import Table, add_markdown_option, publish
from tasks.data.decode import decode
from tasks.data.resize import resize_image


def opencv_decode(path: Path, image_size: int) -> np.ndarray:
    return resize_image(cv2.imread(str(path), cv2.IMREAD_COLOR_RGB), image_size)


def median_ms(function, paths: list[Path], image_size: int, repeats: int) -> float:
    times = []
    for path in paths * repeats:
        start = time.perf_counter()
        function(path, image_size)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    add_markdown_option(parser)
    args = parser.parse_args()
    table = Table(
        f"decode_speed-{args.data_root.resolve().name}",
        f"Image file to {args.image_size} px model input, median over the test images "
        f"of {args.data_root.name}",
        ["category", "images", "size", "decode + resize ms", "OpenCV + resize ms", "same pixels"],
    )
    print(f"{'category':12}{'images':>7}{'size':>11}{'decode ms':>11}{'OpenCV ms':>11}{'same':>6}")
    for category in sorted(p for p in args.data_root.iterdir() if (p / "test").is_dir()):
        paths = sorted((category / "test").glob("*/*.png"))
        if not paths:
            continue
        same = all(
            np.array_equal(decode(p, args.image_size), opencv_decode(p, args.image_size))
            for p in paths
        )
        ours = median_ms(decode, paths, args.image_size, args.repeats)
        theirs = median_ms(opencv_decode, paths, args.image_size, args.repeats)
        h, w = cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED).shape[:2]
        print(
            f"{category.name:12}{len(paths):>7}{f'{w}x{h}':>11}{ours:>11.1f}{theirs:>11.1f}"
            f"{'yes' if same else 'NO':>6}"
        )
        table.add(category.name, len(paths), f"{w}x{h}", round(ours, 1), round(theirs, 1), same)
    table.notes.append(
        "`decode` is `tasks.data.decode.decode`: libspng for colour PNGs, OpenCV otherwise"
    )
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
