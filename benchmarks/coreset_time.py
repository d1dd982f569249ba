"""Time PatchCore's 10 % coreset (tasks.models.patchcore.coreset) on a real-category-sized
patch set, and compare it with anomalib's greedy k-center.

Features: PatchCore's embedding as the quick profile computes it (offline
EfficientNet-Lite0, blocks.2 + blocks.4: 152 dims, 256 px images, 1,024 patches an image)
of the shared MVTec AD grid subset's 25 train images.

- [real size] 172 views (the train-image count of a full MVTec grid category), i.e.
  176,128 patches: the 25 images plus 147 random crops (50-90 % of the side) turned by
  a random multiple of 90 degrees. The full 10 % coreset is timed, wall and CPU seconds,
  with the progress lines the product logs. anomalib's greedy runs `--steps` steps on the
  same set and its full time is extrapolated linearly (stated as such).
- [demo size] the 25 images (25,600 patches), full 10 % coreset: anomalib's
  `KCenterGreedy` as PatchCore calls it (its own random projection) against
  `fast_coreset_indices`, with the image AUROC of both memory banks on the subset's 14
  test images; and the step-by-step selection agreement of the two on the same features
  and start.
- the lookahead product in fp32 against bf16: time and the bf16 error, which is why the
  coreset uses fp32.

Usage: python -m benchmarks.coreset_time [--steps 300] [--threads 2] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import timm
import torch
import tqdm
from anomalib.models.components import KCenterGreedy
from anomalib.models.components.sampling import k_center_greedy
from sklearn.metrics import roc_auc_score
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.performance import Table, add_markdown_option, publish  # noqa: E402
from tasks.data.decode import load_images  # noqa: E402
from tasks.models.patchcore.coreset import (  # noqa: E402
    _augmented_points,
    fast_coreset_indices,
    greedy_coreset_indices,
)
from tasks.models.patchcore.model import build_patchcore  # noqa: E402
from tasks.models.registry import settings_for  # noqa: E402
from tasks.runtime.profiles import load_profile  # noqa: E402

GRID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_ad_subset" / "grid"
REAL_CATEGORY_IMAGES = 172  # MVTec AD grid has 264 train images, carpet 280, bottle 209 ...


def views(paths: list[Path], count: int, seed: int = 0) -> list[torch.Tensor]:
    """The images at full size, then random crops of them turned by k*90 degrees."""
    generator = torch.Generator().manual_seed(seed)
    images = [decode_image(str(p), mode=ImageReadMode.RGB).float() / 255 for p in paths]
    result = list(images[:count])
    while len(result) < count:
        image = images[len(result) % len(images)]
        side = image.shape[-1]
        crop = int(side * float(torch.empty(1).uniform_(0.5, 0.9, generator=generator)))
        top, left = (int(torch.randint(side - crop + 1, (1,), generator=generator)) for _ in "tl")
        turns = int(torch.randint(4, (1,), generator=generator))
        result.append(torch.rot90(image[:, top : top + crop, left : left + crop], turns, (1, 2)))
    return result


def embed(model, images: list[torch.Tensor], size: int = 256) -> torch.Tensor:
    """PatchCore's training embedding of `images`, resized and normalised as the profile does."""
    cfg = timm.models.get_pretrained_cfg(model.model.backbone)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    torch_model = model.model.train()
    torch_model.embedding_store.clear()
    with torch.no_grad():
        for start in range(0, len(images), 8):
            batch = [TF.resize(i, [size, size], antialias=True) for i in images[start : start + 8]]
            torch_model(torch.stack([(i - mean) / std for i in batch]))
    embedding = torch.vstack(torch_model.embedding_store)
    torch_model.embedding_store.clear()
    return embedding


def anomalib_steps(features: torch.Tensor, size: int, start: int) -> list[int]:
    """anomalib's KCenterGreedy update/argmax steps on given features from a given start."""
    sampler = KCenterGreedy(embedding=features, sampling_ratio=size / len(features))
    sampler.features = features
    sampler.reset_distances()
    index = torch.tensor(start)
    selected = [start]
    for _ in range(size - 1):
        sampler.update_distances(index)
        index = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, index.view(1, 1), 0.0)
        selected.append(int(index))
    return selected


def image_auroc(model, memory_bank: torch.Tensor) -> float:
    torch_model = model.model.eval()
    torch_model.memory_bank = memory_bank
    scores, labels = [], []
    for path in sorted((GRID / "test").rglob("*.png")):
        with torch.inference_mode():
            scores.append(
                float(
                    torch_model(model.pre_processor.transform(load_images([path], 256))).pred_score
                )
            )
        labels.append(int(path.parent.name != "good"))
    return float(roc_auc_score(labels, scores))


@contextlib.contextmanager
def _quiet_kcenter_tqdm() -> Iterator[None]:
    """anomalib's KCenterGreedy draws a tqdm bar, one carriage return per step."""
    original = k_center_greedy.tqdm
    k_center_greedy.tqdm = functools.partial(tqdm.tqdm, disable=True)
    try:
        yield
    finally:
        k_center_greedy.tqdm = original


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def product_precision(embedding: torch.Tensor, table: Table, lookahead: int = 64) -> None:
    points = _augmented_points(embedding)
    dim = points.shape[1] - 2
    rows = points[torch.randperm(len(points))[:lookahead]]
    queries = torch.cat([-2 * rows[:, :dim], torch.ones(lookahead, 1), rows[:, dim:-1]], 1)
    exact = (queries.double() @ points.double().T).float()
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        q, p = queries.to(dtype), points.to(dtype)
        q @ p.T  # warm-up
        _, wall, cpu = timed(lambda q=q, p=p: q @ p.T)
        error = ((q @ p.T).float() - exact).abs() / exact.clamp(min=1)
        print(
            f"  {name}: {wall * 1e3:6.1f} ms wall, {cpu * 1e3:6.1f} ms CPU per {lookahead}-row "
            f"block; squared-distance error median {error.median():.1e}, max {error.max():.1e}"
        )
        table.add(f"lookahead product, {lookahead} rows, {name}", "", f"{wall * 1e3:.1f} ms",
                  f"{cpu * 1e3:.1f} ms", f"distance error median {error.median():.1e}, "
                  f"max {error.max():.1e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="anomalib steps timed, real size")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--skip-demo", action="store_true", help="real size only")
    add_markdown_option(parser)
    args = parser.parse_args()
    if not GRID.is_dir():
        sys.exit(f"{GRID} is absent: this benchmark needs the shared MVTec AD subset")
    logging.basicConfig(level=logging.INFO, format="  %(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quick = load_profile("quick")
    model, provenance = build_patchcore(settings_for("patchcore", quick), quick.assets)
    train = sorted((GRID / "train" / "good").glob("*.png"))
    print(
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f} at start; backbone {provenance['backbone']} "
        f"{provenance['layers']}"
    )

    # The demo size first: run after the real size, anomalib's greedy grew the heap past
    # 24 GiB (killed for memory): glibc, having freed the real size's
    # large buffers, served its 25.6 MB per-step buffers from a heap that kept growing.
    table = Table(
        "coreset_time",
        f"PatchCore's {args.ratio:.0%} coreset (quick profile's embedding of the real grid "
        f"subset), torch threads {torch.get_num_threads()}",
        ["set", "selection", "wall", "CPU", "result"],
    )
    if not args.skip_demo:
        demo_size(model, train, args.ratio, table)
    real_size(model, train, args.ratio, args.steps, table)
    publish(table, args.markdown)


def real_size(model, train: list[Path], ratio: float, steps: int, table: Table) -> None:
    real = embed(model, views(train, REAL_CATEGORY_IMAGES))
    size = int(len(real) * ratio)
    print(f"\n[real size] embedding {tuple(real.shape)}, {ratio:.0%} coreset = {size}")
    _, wall, cpu = timed(greedy_coreset_indices, real, size, 0)
    print(
        f"tasks.models.patchcore.coreset           {wall:7.1f} s wall {cpu:7.1f} s CPU (full run)"
    )
    _, ref_wall, ref_cpu = timed(anomalib_steps, real, steps, 0)
    ref_wall, ref_cpu = ref_wall / steps * size, ref_cpu / steps * size
    print(
        f"anomalib KCenterGreedy ~{ref_wall:7.1f} s wall {ref_cpu:7.1f} s CPU "
        f"(extrapolated from {steps} steps)"
    )
    print(f"speed-up x{ref_wall / wall:.1f} wall; load average {os.getloadavg()[0]:.1f} now")
    table.add(f"real size, {len(real):,} patches", "tasks.models.patchcore.coreset",
              f"{wall:.1f} s", f"{cpu:.1f} s", f"{size:,} patches")  # fmt: skip
    table.add(f"real size, {len(real):,} patches", "anomalib KCenterGreedy",
              f"~{ref_wall:.0f} s", f"~{ref_cpu:.0f} s",
              f"extrapolated from {steps} steps; x{ref_wall / wall:.1f} ours")  # fmt: skip
    print("\n[lookahead product, 64 rows x all patches]")
    product_precision(real, table)


def demo_size(model, train: list[Path], ratio: float, table: Table) -> None:
    demo = embed(model, views(train, len(train)))
    size = int(len(demo) * ratio)
    print(f"\n[demo size] embedding {tuple(demo.shape)}, {ratio:.0%} coreset = {size}")
    reference = anomalib_steps(demo, size, start=0)
    fast = greedy_coreset_indices(demo, size, 0, progress=None).tolist()
    same = [a == b for a, b in zip(fast, reference, strict=True)]
    agreement = sum(same) / size
    first_split = same.index(False) if False in same else size
    print(
        f"same features, same start: {agreement:.1%} of steps pick the same patch "
        f"(identical for the first {first_split} steps)"
    )
    torch.manual_seed(1)
    with _quiet_kcenter_tqdm():
        stock, ref_wall, _ = timed(KCenterGreedy(demo, ratio).select_coreset_idxs)
    torch.manual_seed(1)
    ours, wall, _ = timed(fast_coreset_indices, demo, ratio, progress=None)
    stock_auroc, our_auroc = image_auroc(model, demo[stock]), image_auroc(model, demo[ours])
    tests = len(list((GRID / "test").rglob("*.png")))
    print(
        f"anomalib KCenterGreedy (its projection) {ref_wall:6.1f} s  image AUROC {stock_auroc:.3f}"
    )
    print(f"fast_coreset_indices                    {wall:6.1f} s  image AUROC {our_auroc:.3f}")
    print(f"(image AUROC on the subset's {tests} test images)")
    where = f"demo size, {len(demo):,} patches"
    table.add(where, "anomalib KCenterGreedy", f"{ref_wall:.1f} s", "",
              f"image AUROC {stock_auroc:.3f} ({tests} test images)")  # fmt: skip
    table.add(where, "fast_coreset_indices", f"{wall:.1f} s", "",
              f"image AUROC {our_auroc:.3f}; same pick as anomalib's in {agreement:.1%} of "
              f"steps, the first {first_split} identical")  # fmt: skip


if __name__ == "__main__":
    main()
