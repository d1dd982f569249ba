"""EfficientAD-S training step time on CPU: anomalib's losses against
tasks.models.efficientad.training's (same losses, less work), in fp32 and bf16 autocast,
with contiguous (NCHW) or channels-last (NHWC) tensors.

One step = losses, backward and Adam update at 256 px, batch 1, the way both run inside
Lightning (without Lightning's own overhead, the same for both). Prints seconds per step
(wall and process CPU, median after one warm-up step) for each (losses, precision), and
whether the CPU has AMX (bf16 is only faster with it).

Usage: python -m benchmarks.efficientad_train_speed [--steps 6] [--threads 2]
       [--losses ours] [--layouts nchw nhwc] [--precisions fp32 bf16] [--markdown]

bf16 is measured by default only where the CPU computes it natively (AVX-512 BF16 or
AMX): elsewhere torch emulates it, at minutes per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from benchmarks.performance import Table, add_markdown_option, publish
from tasks.models.efficientad.training import (
    TeacherCache,
    cpu_has_amx,
    cpu_training_layout,
    efficientad_losses,
)
from tasks.runtime.hardware import cpu_has_bf16


def step_seconds(
    losses: str, precision: str, steps: int, layout: str = "nchw"
) -> tuple[float, float]:
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    model = EfficientAdModel(teacher_out_channels=384, model_size="small").train()
    model = model.to(memory_format=memory_format)
    model.teacher.requires_grad_(False)
    for value in model.mean_std.values():
        value.data.uniform_(0.5, 1.5)
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)
    images, penalty = (
        torch.rand(1, 3, 256, 256).contiguous(memory_format=memory_format) for _ in range(2)
    )
    cache = TeacherCache()
    walls, cpus = [], []
    for _ in range(steps + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            if losses == "anomalib":
                parts = model(images, penalty)
            else:
                parts = efficientad_losses(model, images, penalty, cache, ["train/000.png"])
        optimizer.zero_grad()
        sum(parts).backward()
        optimizer.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls[1:]), statistics.median(cpus[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--losses", nargs="+", default=["anomalib", "ours"])
    parser.add_argument(
        "--layouts", nargs="+", default=["nchw", "nhwc"], help="nhwc = channels-last"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16"] if cpu_has_bf16() else ["fp32"],
        help="default: bf16 too where the CPU computes it natively",
    )
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = Table(
        "efficientad_train_speed",
        f"One EfficientAD-S training step (256 px, batch 1, Adam), median of {args.steps} "
        f"after a warm-up step, torch threads {torch.get_num_threads()}",
        ["losses", "precision", "layout", "s/step wall", "s/step CPU"],
    )
    print(
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, AMX {cpu_has_amx()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    chosen = "nhwc" if cpu_training_layout() == torch.channels_last else "nchw"
    print(
        f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}: the product trains {chosen}"
    )
    print(f"{'losses':<10}{'precision':<11}{'layout':<8}{'s/step wall':>12}{'s/step CPU':>12}")
    for losses in args.losses:
        for precision in args.precisions:
            for layout in args.layouts:
                wall, cpu = step_seconds(losses, precision, args.steps, layout)
                print(
                    f"{losses:<10}{precision:<11}{layout:<8}{wall:>12.2f}{cpu:>12.2f}", flush=True
                )
                table.add(losses, precision, layout, f"{wall:.2f}", f"{cpu:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    table.notes.append(
        f"torch's CPU kernels here: {torch.backends.cpu.get_cpu_capability()}; the product "
        f"trains {chosen} (`cpu_training_layout`); nhwc = channels-last"
    )
    publish(table, args.markdown)


if __name__ == "__main__":
    main()
