"""The torch inference paths: `torch-fp32`, `torch-bf16` and `torch-fp16-graph`.

The anomalib torch module (pre-processor + model) scores decoded images channels-last,
in fp32 or under bf16/fp16 autocast where the device computes them natively; on a GPU,
`torch-fp16-graph` replays it from CUDA graphs, as the EfficientAD paper times its
models. These are the reference paths: every exported path's AUROC is held to
`torch-fp32`'s.

Example:
    >>> score = torch_scorer(model, precision="bf16")
    >>> score(images).pred_score  # raw scores, float32 on the CPU
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import AnomalibModule
from torch import nn

from tasks.data.decode import decode, to_float
from tasks.inference.graph import model_graph
from tasks.inference.path_types import PRECISIONS, BuiltPath, PathContext, PathUnsupported
from tasks.runtime.hardware import cpu_has_bf16


def bf16_support(device: str) -> str | None:
    """None when `device` runs bf16 natively, else why not."""
    if device.startswith("cuda"):
        return None if torch.cuda.is_bf16_supported() else "this CUDA device has no bf16 support"
    return None if cpu_has_bf16() else "the CPU has neither AVX-512 BF16 nor AMX"


TORCH_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_scorer(
    model: AnomalibModule | nn.Module,
    precision: str = "fp32",
    device: str = "cpu",
    cuda_graph: bool = False,
) -> Callable[[torch.Tensor], InferenceBatch]:
    """Float images (N, 3, H, W) in [0, 1] -> raw scores and maps, in fp32 or under bf16
    or fp16 autocast (`precision`); with `cuda_graph`, replayed from CUDA graphs."""
    dtype = TORCH_DTYPES[precision]
    # channels-last lets oneDNN skip layout reorders (docs/performance.md, torch paths)
    graph = copy.deepcopy(model_graph(model)).to(device).to(memory_format=torch.channels_last)
    device_type = device.split(":")[0]
    run: Callable = graph
    if cuda_graph:
        run = CudaGraphed(graph, dtype)

    def score(images: torch.Tensor) -> InferenceBatch:
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(device_type, dtype or torch.bfloat16, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            pred_score, anomaly_map = run(images)
        return InferenceBatch(
            pred_score=pred_score.float().cpu().reshape(-1), anomaly_map=anomaly_map.float().cpu()
        )

    return score


class CudaGraphed:
    """`module` replayed from CUDA graphs, one captured per input shape.

    At batch 1 a GPU spends longer launching a small network's kernels (EfficientAD-S's)
    than running them; captured, they are launched as one graph (figures in
    docs/performance.md, `benchmarks/gpu_latency.py`). Replay runs the captured kernels
    on fixed buffers: the images are copied into the input buffer, and the outputs are
    copied out before the next replay."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None) -> None:
        self.module, self.dtype = module, dtype
        self.captured: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}

    def _autocast(self):
        # autocast's weight cache must stay off while capturing (torch's CUDA graph notes)
        dtype = self.dtype or torch.float16
        return torch.autocast("cuda", dtype, enabled=self.dtype is not None, cache_enabled=False)

    def _capture(self, images: torch.Tensor) -> tuple:
        static = images.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), self._autocast():
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph asks
                self.module(static)
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), self._autocast(), torch.cuda.graph(cuda_graph):
            outputs = self.module(static)
        return cuda_graph, static, outputs

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(images.shape), images.stride(), images.dtype)
        if key not in self.captured:
            with torch.inference_mode(False):
                self.captured[key] = self._capture(images)
        cuda_graph, static, outputs = self.captured[key]
        static.copy_(images)
        cuda_graph.replay()
        return tuple(output.clone() for output in outputs)


def torch_path(ctx: PathContext, name: str) -> BuiltPath:
    """torch-fp32, torch-bf16 (autocast), or torch-fp16-graph (fp16 autocast replayed from
    CUDA graphs: how the EfficientAD paper times its models)."""
    precision, cuda_graph = PRECISIONS[name], name == "torch-fp16-graph"
    if cuda_graph and not ctx.device.startswith("cuda"):
        raise PathUnsupported("CUDA graphs need a CUDA device; this path runs on GPUs only")
    if precision == "bf16" and (reason := bf16_support(ctx.device)):
        raise PathUnsupported(reason)
    score = torch_scorer(ctx.model, precision, ctx.device, cuda_graph)
    size = ctx.image_size

    def score_files(paths: Sequence[Path]) -> np.ndarray:
        return score(to_float([decode(p, size) for p in paths])).pred_score.numpy()

    return BuiltPath(name, precision, score_files, ctx.device, torch.get_num_threads())
