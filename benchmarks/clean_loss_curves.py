"""Record long, clean EfficientAD loss curves for calibrating the loss-spike detector.

Trains the quick profile's EfficientAD (offline teacher, bf16-mixed, batch size 1) on one
demo category for `--steps` optimizer steps with no spike watcher that could stop it, and
writes every step's logged losses to a gzipped CSV (`step,loss_name,value`) with a header
comment saying how the curve was made. The file is rewritten every `--flush-every` steps,
so an interrupted run still leaves a usable (shorter) curve.

`--image-size 128` makes a run about 4x cheaper: the images are 128 px and the
autoencoder's last encoder convolution (8x8 at 1/32 scale, which needs 256 px) becomes
4x4; everything else (teacher, student, losses, optimizer, batch size 1) is anomalib's
EfficientAD. The header of the file says which size made it.

The stored curves under `benchmarks/data/clean_loss_curves/` are what
`tests/test_loss_spikes.py` replays through the detector to require zero false alarms,
and what `python -m benchmarks.spike_detection --replay` reports on.

    python -m benchmarks.clean_loss_curves --category demo_grid --steps 2000 --seed 42
"""

from __future__ import annotations

import argparse
import gzip
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from anomalib.engine import Engine
from anomalib.models import EfficientAd
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from tasks.data.datamodule import make_datamodule
from tasks.data.demo_data import ensure_demo_dataset
from tasks.models.efficientad.model import build_efficientad
from tasks.models.efficientad.training import resolve_training_precision
from tasks.models.registry import settings_for
from tasks.results.types import DatasetSpec
from tasks.runtime.profiles import load_profile
from tasks.runtime.quiet import quiet_training

DATA_DIR = Path(__file__).resolve().parent / "data" / "clean_loss_curves"
LOSS_NAMES = ("train_st", "train_ae", "train_stae", "train_loss")


def write_curve(path: Path, header: str, losses: list[tuple[int, str, float]]) -> None:
    """Gzipped CSV with `# ` header lines; written to a temp file, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as out:
        for line in header.splitlines():
            out.write(f"# {line}\n")
        out.write("step,loss_name,value\n")
        for step, name, value in losses:
            out.write(f"{step},{name},{value!r}\n")
    tmp.replace(path)


def read_curve(path: Path) -> list[tuple[int, str, float]]:
    """The `(step, loss_name, value)` rows of a curve written by `write_curve`."""
    rows = []
    with gzip.open(path, "rt") as src:
        for line in src:
            if line.startswith("#") or line.startswith("step,"):
                continue
            step, name, value = line.rstrip("\n").split(",")
            rows.append((int(step), name, float(value)))
    return rows


class _Recorder(Callback):
    def __init__(self, path: Path, header: str, flush_every: int) -> None:
        self.path, self.header, self.flush_every = path, header, flush_every
        self.losses: list[tuple[int, str, float]] = []
        self.started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        del pl_module, outputs, batch, idx
        step = trainer.global_step
        metrics = trainer.callback_metrics
        for name in LOSS_NAMES:
            value = metrics.get(f"{name}_step", metrics.get(name))
            if value is not None:
                self.losses.append((step, name, float(value)))
        if step % self.flush_every == 0:
            self.flush(step)

    def flush(self, step: int) -> None:
        elapsed = time.perf_counter() - self.started
        write_curve(
            self.path, f"{self.header}\nsteps recorded: {step} in {elapsed:.0f} s", self.losses
        )
        print(
            f"step {step}: {elapsed / max(step, 1):.2f} s/step, written to {self.path}", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="demo_grid")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--flush-every", type=int, default=100)
    parser.add_argument("--image-size", type=int, choices=(128, 256), default=256)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--weights-dir", default=None, help="offline teacher cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="clean_curves_"))
    root = ensure_demo_dataset(work / "demo")
    spec = DatasetSpec(kind="demo", root=root, categories=(args.category,))
    overrides: dict = {"efficientad": {"max_steps": args.steps}}
    if args.weights_dir:
        overrides["weights_dir"] = args.weights_dir
    profile = load_profile("quick", overrides)
    settings = settings_for("efficientad", profile)
    precision = resolve_training_precision(settings.training_precision, "cpu")
    out = args.out or DATA_DIR / f"efficientad_{args.category}_seed{args.seed}.csv.gz"
    header = (
        f"EfficientAD-{settings.model_size} quick profile, {args.steps} planned steps, batch "
        f"{settings.train_batch_size}, image {args.image_size} px, lr {settings.lr}, "
        f"precision {precision}, seed {args.seed}, category {args.category} "
        f"(demo data), offline teacher ({settings.teacher_distill_steps} distill steps), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
        f"command: python -m benchmarks.clean_loss_curves --category {args.category} "
        f"--steps {args.steps} --seed {args.seed} --image-size {args.image_size}"
    )
    datamodule, _, _ = make_datamodule(spec, args.category, profile, settings.train_batch_size)
    seed_everything(args.seed, workers=True, verbose=False)
    weights_dir = Path(args.weights_dir) if args.weights_dir else work / "weights"
    model, _ = build_efficientad(
        settings,
        weights_dir,
        profile.assets,
        pre_processor=EfficientAd.configure_pre_processor((args.image_size,) * 2),
    )
    if args.image_size == 128:
        model.model.ae.encoder.enconv6 = torch.nn.Conv2d(64, 64, kernel_size=4)
    recorder = _Recorder(out, header, args.flush_every)
    engine = Engine(
        default_root_dir=work / "run",
        callbacks=[recorder],
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=10**6,
        max_steps=args.steps,
        precision=precision,
        logger=False,
    )
    with quiet_training():
        engine.fit(model, datamodule=datamodule)
    recorder.flush(engine.trainer.global_step)


if __name__ == "__main__":
    main()
