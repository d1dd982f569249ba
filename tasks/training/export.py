"""Save a trained anomalib model and load it back for scoring in another process.

`export_model` writes the Lightning checkpoint (to resume or re-evaluate) and anomalib's
inference export, `Engine.export(..., ExportType.TORCH)`: the whole module, pre-processor
(resize, normalise), torch model and post-processor (score normalisation), pickled in one
`.pt` file. The ONNX and OpenVINO IR exports are written with the inference paths
(`tasks.inference.measure`).

`load_exported` gives an `ExportedModel` whose `.score(image_path)` returns the image's
anomaly score as the exported module computes it: the model's raw score, the same value
the benchmark's metrics use (the post-processor adds a label at the threshold fitted on
validation data, it does not rescale the score).

Example:
    >>> artifacts = export_model(model, engine, run_dir / "export")
    >>> load_exported(artifacts["torch"]).score("test/broken/000.png")
    31.7
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF  # noqa: N812

logger = logging.getLogger(__name__)


def export_model(model: AnomalibModule, engine: Engine, out_dir: Path) -> dict[str, str]:
    """Write `checkpoint` (Lightning .ckpt) and `torch` (anomalib inference export).

    `engine` must be the one that trained `model` (its trainer writes the checkpoint).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    torch_path = engine.export(model=model, export_type=ExportType.TORCH, export_root=out_dir)
    if torch_path is None:
        raise RuntimeError(f"anomalib wrote no torch export under {out_dir}")
    logger.info(
        "exported %s: checkpoint %s, torch %s", type(model).__name__, checkpoint, torch_path
    )
    return {"checkpoint": str(checkpoint), "torch": str(torch_path)}


class ExportedModel:
    """A loaded torch export: decode an image file, run the whole module, return its score."""

    def __init__(self, module: AnomalibModule) -> None:
        self.module = module.eval()

    def score(self, image_path: str | Path) -> float:
        image = decode_image(read_file(str(image_path)), mode=ImageReadMode.RGB)
        image = TF.to_dtype(image, torch.float32, scale=True)[None]
        with torch.inference_mode():
            prediction = self.module(image)
        return float(prediction.pred_score.reshape(-1)[0])


def load_exported(path: str | Path) -> ExportedModel:
    """Load a `.pt` written by `export_model` (torch export); no retraining, no Engine.

    The file is a pickle of the whole module (anomalib's format), so it is loaded with
    `weights_only=False`: only load exports this project wrote.
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"{path}: expected the torch export (.pt) from export_model")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported model there")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return ExportedModel(checkpoint["model"])
