"""How far int8 scores move from fp32: NNCF's default calibration against the product's.

Trains one quick-profile model on one category (the flow's own stages), then scores the
whole test split with the fp32 OpenVINO graph and with two int8 graphs of it:
- `nncf-default`: NNCF's default ranges (mean of per-image extremes) on training images;
- `product`: what `openvino-int8` does (`tasks.inference.openvino_backend.openvino_model`):
  training images and validation anomalies, overall min/max ranges widened
  `ACTIVATION_RANGE_MARGIN` times.
Prints, per graph, the largest and mean score error as a share of the fp32 scores' range,
the correlation with the fp32 scores and the test image AUROC change. No timing here:
`benchmarks/inference_paths.py` times the paths.

Run (`--markdown` also writes the table into docs/performance.md):
    python -m benchmarks.int8_calibration --category demo_grass --model efficientad
    python -m benchmarks.int8_calibration --dataset mvtec \
        --data-root ../shared/datasets/mvtec_ad_subset --category leather
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import nncf
import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.inference_paths import _spec
from benchmarks.performance import Table, add_markdown_option, publish
from tasks.data.datamodule import validation_anomalies
from tasks.data.decode import decode, load_images
from tasks.inference.openvino_backend import (
    compile_openvino,
    int8_fp32_scope,
    openvino_model,
    with_uint8_input,
)
from tasks.models import registry
from tasks.runtime.profiles import load_profile
from tasks.runtime.quiet import quiet_training
from tasks.training.attempts import fit_with_recovery, select
from tasks.training.coordinator import evaluate
from tasks.training.prepare import prepare


def _scores(ov_model, images: list[np.ndarray]) -> np.ndarray:
    request = compile_openvino(with_uint8_input(ov_model), "fp32", None).create_infer_request()
    return np.array([float(np.ravel(request.infer({0: im[None]})[0])[0]) for im in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("demo", "mvtec", "folder"), default="demo")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--category", default="demo_grass")
    parser.add_argument("--model", choices=("efficientad", "patchcore"), default="efficientad")
    parser.add_argument("--work-dir", type=Path, default=None)
    add_markdown_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="int8-calibration-"))
    spec = _spec(args.dataset, args.data_root, args.category, work)
    profile = load_profile("quick", {"weights_dir": str(work / "weights")})
    prep = prepare(args.model, args.category, spec, profile, work / args.model)
    with quiet_training():
        candidates, attempts = fit_with_recovery(prep)
        chosen, _ = select(candidates, attempts, prep.label)
        evaluation = evaluate(prep, chosen)
    model, size, settings = chosen.model, prep.settings.image_size, profile.inference
    labels = np.array([im.label for im in evaluation.images])
    test = [decode(Path(im.path), size) for im in evaluation.images]
    train = prep.train_paths[: settings.calibration_images]
    anomalies = validation_anomalies(prep.datamodule)[: settings.calibration_anomalies]

    deployment = registry.get(args.model).deployment  # the exported form, as the paths use
    reference = _scores(openvino_model(model, size, deployment=deployment), test)
    span = reference.max() - reference.min()
    nncf.set_log_level(logging.WARNING)
    default = nncf.quantize(
        openvino_model(model, size, deployment=deployment),
        nncf.Dataset([im[None].numpy() for im in load_images(train, size)]),
        subset_size=len(train),
        ignored_scope=int8_fp32_scope(deployment),
    )
    product = openvino_model(
        model, size, calibration_images=load_images(train + anomalies, size), deployment=deployment
    )
    print(
        f"\n{args.model} on {args.dataset}/{args.category}: fp32 test image AUROC "
        f"{roc_auc_score(labels, reference):.4f}, {len(labels)} test images; calibration "
        f"{len(train)} training images (+ {len(anomalies)} validation anomalies for product)"
    )
    print(f"{'int8 graph':14}{'max err':>9}{'mean err':>10}{'corr':>8}{'dAUROC':>9}")
    table = Table(
        f"int8_calibration-{args.model}-{args.category}",
        f"int8 scores against fp32, {registry.get(args.model).display_name} (quick profile) on "
        f"{args.dataset}/{args.category}, {len(labels)} test images",
        ["int8 calibration", "largest error", "mean error", "correlation", "AUROC change"],
    )
    for name, ov_model in (("nncf-default", default), ("product", product)):
        scores = _scores(ov_model, test)
        error = np.abs(scores - reference) / span
        change = roc_auc_score(labels, scores) - roc_auc_score(labels, reference)
        corr = np.corrcoef(scores, reference)[0, 1]
        print(f"{name:14}{error.max():9.4f}{error.mean():10.4f}{corr:8.4f}{change:+9.4f}")
        table.add(name, f"{error.max():.4f}", f"{error.mean():.4f}", f"{corr:.4f}",
                  f"{change:+.4f}")  # fmt: skip
    print("(errors as a share of the fp32 scores' range)")
    table.notes.append(
        f"errors as a share of the fp32 scores' range; nncf-default: NNCF's ranges on "
        f"{len(train)} training images; product: those and {len(anomalies)} validation "
        "anomalies, min/max ranges widened"
    )
    publish(table, args.markdown)  # int8 kernels, and so the scores, differ between CPUs


if __name__ == "__main__":
    main()
