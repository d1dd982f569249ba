"""EfficientAD-S latency and training-step time on a GPU, measured the way the paper does.

The EfficientAD paper (Batzner, Heckler, König, WACV 2024, section 4 and appendix)
reports about 2 ms per image for EfficientAD-S on a GPU: batch 1, 256 x 256 input, fp16,
the mean of the last 1,000 of 2,000 runs, with the copy of the image to the GPU and of
the anomaly map back to the host inside each timed run. This script times anomalib's own
`EfficientAdModel` (the network the benchmark trains) that way, and also:

- fp32 and bf16, channels-last, and a CUDA-graph build (`torch.compile`, reduce-overhead);
  fp16 and bf16 run under autocast (see `prepare`);
- the benchmark's own `torch-fp16-graph` inference path (fp16 autocast, CUDA graphs
  captured by `tasks.inference.torch_backend.CudaGraphed`, no compilation), decode left out;
- throughput at batch 16;
- each variant's map against eager fp32's, same weights and image (max difference over
  the fp32 map's largest value), so a fast variant that computes something else shows;
- one training step (teacher, student, autoencoder and the penalty image, Adam), so a user
  can see what the paper's 70,000 steps cost per category on their GPU.

Weights are random: latency does not depend on their values. Figures go to stdout and,
with `--json`, to a file.

Run on a machine with a CUDA GPU (`--markdown` also writes the tables into
docs/performance.md, stamped with the GPU):
    python -m benchmarks.gpu_latency --json gpu_latency.json
Rewrite the section from figures an earlier run stored (labelled with the GPU stored):
    python -m benchmarks.gpu_latency --from-json benchmarks/data/gpu/gpu_latency_h200.json \
        --markdown
A CPU smoke run (fp32 only, few runs):
    python -m benchmarks.gpu_latency --device cpu --runs 4 --train-steps 2 --variants fp32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, EfficientAdModelSize

from benchmarks.performance import Table, add_markdown_option, publish

IMAGE_SIZE = 256
PAPER_STEPS = 70_000
VARIANTS = (
    "fp16",
    "fp32",
    "bf16",
    "fp16-channels-last",
    "fp16-cuda-graph",
    "fp32-cuda-graph",
    "fp16-graph-path",  # the benchmark's own torch-fp16-graph path (tasks.inference.torch_backend)
)


def build_model(device: str) -> EfficientAdModel:
    """EfficientAD-S with the same random weights on every call."""
    torch.manual_seed(0)
    model = EfficientAdModel(teacher_out_channels=384, model_size=EfficientAdModelSize.S)
    return model.to(device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prepare(model: EfficientAdModel, variant: str, device: str):
    """An eval-mode scorer for one variant: fp32, or fp16/bf16 under autocast.

    anomalib's networks normalise their input with fp32 ImageNet statistics, so a model
    cast wholesale to half fails; autocast runs the convolutions in half precision, as the
    benchmark's own `torch-bf16` path does.
    """
    model = model.eval()
    if variant == "fp16-graph-path":
        from tasks.inference.torch_backend import torch_scorer

        scorer = torch_scorer(model, device=device, precision="fp16", cuda_graph=True)
        return lambda host_image: scorer(host_image).anomaly_map
    half = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[variant.split("-")[0]]
    memory_format = torch.channels_last if "channels-last" in variant else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = (
        torch.compile(model, mode="reduce-overhead") if variant.endswith("cuda-graph") else model
    )
    device_type = device.split(":")[0]

    def score(host_image: torch.Tensor) -> torch.Tensor:
        image = host_image.to(device).contiguous(memory_format=memory_format)
        with (
            torch.inference_mode(),
            torch.autocast(device_type, dtype=half or torch.float32, enabled=half is not None),
        ):
            result = forward(image)
        return result.anomaly_map.float().cpu()

    return score


def time_latency(score, device: str, runs: int) -> dict:
    """Batch-1 latency in ms, host copies included; the paper's figure: mean of the last half."""
    host_image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    latencies = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        score(host_image)  # .cpu() of the map waits for the GPU
        latencies.append((time.perf_counter() - start) * 1000)
    timed = latencies[runs // 2 :]
    return {
        "runs": runs,
        "timed_runs": len(timed),
        "mean_last_half_ms": statistics.fmean(timed),
        "p50_ms": statistics.median(timed),
        "p95_ms": statistics.quantiles(timed, n=20)[-1] if len(timed) > 1 else timed[0],
        "images_per_s": 1000 / statistics.fmean(timed),
    }


def time_throughput(score, device: str, batch: int, rounds: int) -> float:
    host_batch = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    for _ in range(3):
        score(host_batch)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(rounds):
        score(host_batch)
    return batch * rounds / (time.perf_counter() - start)


def time_training_step(device: str, steps: int, autocast_dtype: torch.dtype | None) -> dict:
    """Mean seconds per batch-1 training step (losses, backward, Adam), after warm-up steps."""
    model = build_model(device).train()
    model.teacher.requires_grad_(False)
    optimizer = torch.optim.Adam(
        list(model.student.parameters()) + list(model.ae.parameters()), lr=1e-4, weight_decay=1e-5
    )
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    penalty = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    enabled = autocast_dtype is not None
    device_type = device.split(":")[0]

    def step() -> None:
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=enabled):
            loss_st, loss_ae, loss_stae = model(image, penalty)
            loss = loss_st + loss_ae + loss_stae
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    warmup = max(1, steps // 5)
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return {
        "precision": "bf16-autocast" if enabled else "fp32",
        "steps": steps,
        "seconds_per_step": seconds,
        "paper_steps_minutes": seconds * PAPER_STEPS / 60,
    }


def environment(device: str) -> dict:
    import anomalib

    info = {
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "python": platform.python_version(),
        "device": device,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--runs", type=int, default=2000, help="batch-1 runs; the last half is timed"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batch-rounds", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--from-json", help="no timing: publish the figures stored in this file")
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as handle:
            stored = json.load(handle)
        command = f"python -m benchmarks.gpu_latency --from-json {args.from_json}"
        publish_figures(stored, args.markdown, command, kind="stored")
        return
    if args.runs < 2 or args.train_steps < 1 or args.batch < 1 or args.batch_rounds < 1:
        parser.error(
            "--runs must be at least 2; --train-steps, --batch and --batch-rounds at least 1"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible to torch {torch.__version__}")
    if args.device == "cpu" and any(v.startswith("fp16") for v in args.variants):
        parser.error("fp16 variants need a GPU; on the CPU pass --variants fp32 bf16")

    torch.manual_seed(0)
    figures = {"environment": environment(args.device), "latency": [], "training": []}
    check_image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    reference_map = prepare(build_model(args.device), "fp32", args.device)(check_image)
    print(f"# {figures['environment']}")
    print(
        "| variant | mean of last half, ms | p50 ms | p95 ms | img/s batch 1 "
        f"| img/s batch {args.batch} | map difference |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for variant in args.variants:
        score = prepare(build_model(args.device), variant, args.device)
        # a variant this GPU or torch build cannot run is recorded as failed; the rest go on
        try:
            # same weights and image as the reference: how far this variant's map is from it
            difference = (score(check_image) - reference_map).abs().max()
            row = {
                "variant": variant,
                "map_difference": (difference / reference_map.abs().max()).item(),
            }
            row.update(time_latency(score, args.device, args.runs))
            row["batch"] = args.batch
            row["batch_images_per_s"] = time_throughput(
                score, args.device, args.batch, args.batch_rounds
            )
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            figures["latency"].append({"variant": variant, "error": message})
            print(f"| {variant} | failed: {message[:200]} |", flush=True)
            continue
        figures["latency"].append(row)
        print(
            f"| {variant} | {row['mean_last_half_ms']:.3f} | {row['p50_ms']:.3f} "
            f"| {row['p95_ms']:.3f} | {row['images_per_s']:.0f} "
            f"| {row['batch_images_per_s']:.0f} | {row['map_difference']:.1e} |",
            flush=True,
        )
    autocasts = [None, torch.bfloat16] if args.device.startswith("cuda") else [None]
    for autocast_dtype in autocasts:
        row = time_training_step(args.device, args.train_steps, autocast_dtype)
        figures["training"].append(row)
        print(
            f"# training step ({row['precision']}, batch 1 + penalty image): "
            f"{row['seconds_per_step'] * 1000:.1f} ms; "
            f"{PAPER_STEPS} steps = {row['paper_steps_minutes']:.1f} min",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    publish_figures(figures, args.markdown)


def publish_figures(
    figures: dict, destination, command: str | None = None, kind: str = "measured"
) -> None:
    env = figures["environment"]
    hardware = env.get("gpu") or env.get("cpu") or env["device"]
    software = f"torch {env['torch']}" + (f" + CUDA {env['cuda']}" if env.get("cuda") else "")
    latency = Table(
        "gpu_latency",
        f"EfficientAD-S (anomalib's network, random weights) at batch 1, 256 px, the mean of "
        f"the last half of the runs, copies to and from the device included; {software}, "
        f"anomalib {env['anomalib']}",
        ["variant", "mean ms", "p50 ms", "p95 ms", "img/s batch 1", "img/s batch N",
         "map difference vs fp32"],
    )  # fmt: skip
    for row in figures["latency"]:
        if "error" in row:
            latency.add(row["variant"], f"failed: {row['error'][:120]}", "", "", "", "", "")
            continue
        latency.add(row["variant"], f"{row['mean_last_half_ms']:.3f}", f"{row['p50_ms']:.3f}",
                    f"{row['p95_ms']:.3f}", f"{row['images_per_s']:.0f}",
                    f"{row['batch_images_per_s']:.0f} (batch {row['batch']})",
                    f"{row['map_difference']:.1e}")  # fmt: skip
    training = Table(
        "gpu_training",
        "One EfficientAD-S training step (teacher, student, autoencoder and the penalty "
        "image at batch 1, Adam)",
        ["precision", "ms per step", f"{PAPER_STEPS:,} steps, min"],
    )
    for row in figures["training"]:
        training.add(row["precision"], f"{row['seconds_per_step'] * 1000:.1f}",
                     f"{row['paper_steps_minutes']:.1f}")  # fmt: skip
    publish([latency, training], destination, hardware=hardware, command=command, kind=kind)


if __name__ == "__main__":
    main()
