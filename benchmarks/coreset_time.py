"""Time anomalib's greedy k-center coreset against tasks.coreset on real patch features.

Features: PatchCore's embedding (offline EfficientNet-Lite0, blocks.2+blocks.4) of the
shared MVTec AD grid subset's train images. Two sizes:
- demo size (images at 256 px, ~25k patches): both samplers run the full 10% coreset;
  image AUROC on the subset's test images is printed for both memory banks;
- real size (images at 512 px plus horizontal flips, ~205k patches, like a full MVTec
  category): both run a fixed number of iterations and the full 10% is extrapolated
  linearly (stated in the output). The fast sampler's per-step cost falls as the coreset
  grows, so its extrapolation is an upper bound.

Usage: python benchmarks/coreset_time.py [--steps 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import timm
import torch
from sklearn.metrics import roc_auc_score
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomalib.models.components import KCenterGreedy  # noqa: E402

from tasks.backbones import build_patchcore  # noqa: E402
from tasks.coreset import fast_coreset_indices, greedy_coreset_indices  # noqa: E402
from tasks.profiles import load_profile  # noqa: E402
from tasks.speed import load_image  # noqa: E402

GRID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_ad_subset" / "grid"


def embed(model, paths: list[Path], size: int, flips: bool) -> torch.Tensor:
    """Patch embedding of `paths` resized to `size` (not the pre-processor's 256)."""
    cfg = timm.models.get_pretrained_cfg(model.model.backbone)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    torch_model = model.model.train()
    torch_model.embedding_store.clear()
    for path in paths:
        image = decode_image(str(path), mode=ImageReadMode.RGB).float() / 255
        image = TF.resize(image, [size, size], antialias=True)
        image = ((image - mean) / std)[None]
        torch_model(torch.cat([image, image.flip(-1)]) if flips else image)
    embedding = torch.vstack(torch_model.embedding_store)
    torch_model.embedding_store.clear()
    return embedding


def anomalib_indices(embedding: torch.Tensor, ratio: float, steps: int | None) -> list[int]:
    sampler = KCenterGreedy(embedding=embedding, sampling_ratio=ratio)
    if steps is None:
        return sampler.select_coreset_idxs()
    sampler.model.fit(embedding)
    sampler.features = sampler.model.transform(embedding)
    index = torch.tensor(0)
    for _ in range(steps):
        sampler.update_distances(index)
        index = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, index.view(1, 1), 0.0)
    return []


def image_auroc(model, memory_bank: torch.Tensor) -> float:
    torch_model = model.model.eval()
    torch_model.memory_bank = memory_bank
    scores, labels = [], []
    for path in sorted((GRID / "test").rglob("*.png")):
        with torch.inference_mode():
            scores.append(float(torch_model(load_image(path, 256, model)).pred_score))
        labels.append(int(path.parent.name != "good"))
    return float(roc_auc_score(labels, scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps timed at real size")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--demo-images", type=int, default=25, help="train images, demo size")
    args = parser.parse_args()
    if not GRID.is_dir():
        sys.exit(f"{GRID} is absent: this benchmark needs the shared MVTec AD subset")
    torch.manual_seed(0)
    model, provenance = build_patchcore(load_profile("quick").patchcore)
    train = sorted((GRID / "train" / "good").glob("*.png"))
    print(
        f"threads {torch.get_num_threads()}, backbone {provenance['backbone']} "
        f"{provenance['layers']}, {len(train)} grid train images"
    )

    demo = embed(model, train[: args.demo_images], 256, flips=False)
    print(f"\n[demo size] embedding {tuple(demo.shape)}, coreset {args.ratio:.0%} (full runs)")
    start = time.perf_counter()
    reference = anomalib_indices(demo, args.ratio, None)
    t_ref = time.perf_counter() - start
    start = time.perf_counter()
    fast = fast_coreset_indices(demo, args.ratio, start_index=reference[0]).tolist()
    t_fast = time.perf_counter() - start
    auroc_ref = image_auroc(model, demo[reference])
    print(f"anomalib KCenterGreedy {t_ref:7.1f} s   image AUROC {auroc_ref:.3f}")
    print(
        f"tasks.coreset          {t_fast:7.1f} s   image AUROC {image_auroc(model, demo[fast]):.3f}"
    )
    print(f"speed-up x{t_ref / t_fast:.1f}")

    real = embed(model, train, 512, flips=True)
    size = int(len(real) * args.ratio)
    print(
        f"\n[real size] embedding {tuple(real.shape)}, coreset {size} "
        f"({args.ratio:.0%}); {args.steps} steps timed, full run extrapolated linearly"
    )
    start = time.perf_counter()
    anomalib_indices(real, args.ratio, args.steps)
    t_ref = (time.perf_counter() - start) / args.steps * size
    start = time.perf_counter()
    greedy_coreset_indices(real, args.steps, 0)  # Lite0's 152 dims: no projection needed
    t_fast = (time.perf_counter() - start) / args.steps * size
    print(f"anomalib KCenterGreedy ~{t_ref / 60:6.1f} min (extrapolated)")
    print(f"tasks.coreset          ~{t_fast / 60:6.1f} min (extrapolated, upper bound)")
    print(f"speed-up x{t_ref / t_fast:.1f}")


if __name__ == "__main__":
    main()
