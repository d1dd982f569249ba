"""EfficientAD with anomalib's pretrained teacher and imagenette from the asset layer.

EfficientAD (Batzner et al., "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024, https://arxiv.org/abs/2303.14535) trains a
student and an autoencoder against a frozen teacher and penalises the student on
ImageNet images. anomalib downloads both (the teacher weights and imagenette) when
training starts. Here the asset layer fetches them once, with anomalib's own URLs and
hashes, where the profile's `assets.download` allows it (`flows.fetch_assets` fetches
ahead), and `OfflineEfficientAd` reads them from their local paths only. Where one
cannot be had, its labelled substitute stands in only when `assets.allow_fallback` says
so (`tasks.models.efficientad.teacher`); otherwise the build fails naming the asset. The
provenance dict says which teacher and which penalty images were used, plainly. Its
training step computes anomalib's losses with less work
(`tasks.models.efficientad.training`); inference is anomalib's.

Example:
    >>> profile = load_profile("quick")
    >>> settings = settings_for("efficientad", profile)
    >>> model, provenance = build_efficientad(settings, Path("cache"), profile.assets)
    >>> provenance["source"], provenance["teacher_source"]  # nothing cached here
    ('fallback', 'fallback')
    >>> Engine(max_steps=settings.max_steps).fit(model, datamodule=datamodule)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from anomalib.models import EfficientAd
from anomalib.models.image.efficient_ad import lightning_model as anomalib_efficientad
from anomalib.pre_processing import PreProcessor
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from tasks.assets import MissingAssetsError, Need, efficientad_teachers, imagenette, resolve_asset
from tasks.data.resize import model_resize
from tasks.models.backbones import lite0_weight_files
from tasks.models.efficientad.settings import EfficientAdSettings
from tasks.models.efficientad.teacher import (
    PENALTY_FALLBACK,
    TEACHER_FALLBACK,
    OfflineAssetError,
    distilled_teacher,
    imagenette_penalty,
    load_teacher_state,
    penalty_photos,
    pretrained_teacher,
)
from tasks.models.efficientad.training import (
    TeacherCache,
    cpu_training_layout,
    efficientad_losses,
    resolve_training_precision,
)
from tasks.models.entry import FETCH_COMMAND, BuildContext
from tasks.runtime.asset_settings import AssetSettings
from tasks.runtime.quiet import silent_tqdm

logger = logging.getLogger(__name__)

MIN_IMAGE_SIZE = 256  # the autoencoder's encoder ends in an 8x8 kernel at 1/32 scale


class OfflineEfficientAd(EfficientAd):
    """anomalib's EfficientAd, reading its teacher and penalty images from local paths only.

    The two hooks that would download are replaced, and the training step computes
    anomalib's losses with less work (`tasks.models.efficientad.training.efficientad_losses`);
    inference is anomalib's. `penalty_random_crops` draws random crops instead of
    anomalib's centre crop, so a few photos still give varied penalty images.
    """

    def __init__(
        self,
        teacher_path: str,
        imagenet_dir: str,
        penalty_random_crops: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(imagenet_dir=imagenet_dir, **kwargs)
        self.teacher_path = Path(teacher_path)
        self.penalty_random_crops = penalty_random_crops
        self.teacher_cache = TeacherCache()

    def prepare_pretrained_model(self) -> None:
        self.model.teacher.load_state_dict(
            load_teacher_state(self.teacher_path, self.model.teacher)
        )
        logger.info("EfficientAD teacher loaded from %s", self.teacher_path)

    def prepare_imagenette_data(self, image_size: tuple[int, int] | torch.Size) -> None:
        if not self.imagenet_dir.is_dir():
            msg = (
                f"penalty images not found at {self.imagenet_dir}; EfficientAD never downloads "
                "imagenette here: set efficientad.imagenet_dir to a local copy"
            )
            raise OfflineAssetError(msg)
        height, width = int(image_size[0]), int(image_size[1])
        if self.penalty_random_crops:
            crop: v2.Transform = v2.RandomResizedCrop((height, width), scale=(0.05, 1.0))
        else:  # anomalib's transform for imagenette
            crop = v2.Compose([v2.Resize((2 * height, 2 * width)), v2.CenterCrop((height, width))])
        self.data_transforms_imagenet = v2.Compose(
            [
                v2.ToImage(),
                crop,
                v2.RandomGrayscale(p=0.3),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
        dataset = ImageFolder(self.imagenet_dir, transform=self.data_transforms_imagenet)
        self.imagenet_loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True)
        self.imagenet_iterator = iter(self.imagenet_loader)

    def on_train_start(self) -> None:
        self._teacher_raw = TeacherCache()
        super().on_train_start()  # anomalib's teacher statistics fill `_teacher_raw`
        # standardised as training standardises them: the first step on each image then
        # runs the teacher only on its jittered copy
        cache, self._teacher_raw = self._teacher_raw, None
        with torch.no_grad():
            cache.transform(lambda raw: self.model._normalize_teacher(raw).float())  # noqa: SLF001
        self.teacher_cache = cache

    def on_train_end(self) -> None:
        self.teacher_cache.clear()

    def training_step(self, batch, *args, **kwargs) -> dict[str, torch.Tensor]:
        """anomalib's training step, with its losses from `efficientad_losses` (same
        losses, less work: see tasks.models.efficientad.training)."""
        del args, kwargs
        try:
            penalty = next(self.imagenet_iterator)[0].to(self.device)
        except StopIteration:
            self.imagenet_iterator = iter(self.imagenet_loader)
            penalty = next(self.imagenet_iterator)[0].to(self.device)
        loss_st, loss_ae, loss_stae = efficientad_losses(
            self.model, batch.image, penalty, self.teacher_cache, batch.image_path
        )
        loss = loss_st + loss_ae + loss_stae
        for name, value in (
            ("train_st", loss_st),
            ("train_ae", loss_ae),
            ("train_stae", loss_stae),
            ("train_loss", loss),
        ):
            self.log(name, value.item(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

    def teacher_channel_mean_std(self, dataloader: DataLoader) -> dict[str, torch.Tensor]:
        """anomalib's statistics; the raw teacher outputs it computes on the way are kept
        by image path in `_teacher_raw` (when `on_train_start` set one up)."""
        raw = getattr(self, "_teacher_raw", None)
        if raw is None:
            with silent_tqdm(anomalib_efficientad):
                return super().teacher_channel_mean_std(dataloader)
        paths: list = [None]

        def batches() -> Iterator:
            for batch in dataloader:
                paths[0] = batch.image_path
                yield batch

        keep = self.model.teacher.register_forward_hook(
            lambda _module, _inputs, output: raw.put(paths[0], output)
        )
        try:
            with silent_tqdm(anomalib_efficientad):
                return super().teacher_channel_mean_std(batches())
        finally:
            keep.remove()

    def map_norm_quantiles(self, dataloader: DataLoader) -> dict[str, torch.Tensor]:
        """anomalib's quantiles, as ordinary tensors. Lightning validates in inference mode,
        and the model keeps these as parameters: as inference tensors they make anomalib's
        ONNX export (`torch.export`, non-strict) fail and start again in strict mode,
        slower, for the same graph."""
        with silent_tqdm(anomalib_efficientad):
            quantiles = super().map_norm_quantiles(dataloader)
        with torch.inference_mode(False):
            return {name: value.clone() for name, value in quantiles.items()}


TEACHER_SEED = 0  # keys the substitute teacher's cache: one teacher for every attempt
PAPER_PRECISION = "32-true"  # the paper trains in fp32


def build_efficientad(
    settings: EfficientAdSettings,
    cache_dir: Path,
    assets: AssetSettings,
    *,
    device: str = "cpu",
    fetch_command: str = FETCH_COMMAND,
    **module_kwargs,
) -> tuple[OfflineEfficientAd, dict]:
    """An untrained EfficientAd with anomalib's pretrained teacher and imagenette from the
    asset layer (`tasks.models.efficientad.teacher`), and its provenance.

    Where either cannot be had: its labelled substitute when `assets` allows one (a
    teacher distilled from EfficientNet-Lite0 on `device`, cached in `cache_dir`; the
    scikit-image photos), else `MissingAssetsError` naming each missing asset and
    `fetch_command`. `module_kwargs` go to anomalib's EfficientAd (e.g. `visualizer=False`).

    Provenance names the teacher and the penalty data separately, each with its source
    (`teacher_source`: anomalib | local | fallback; `penalty_data_source`: imagenette |
    local | fallback) and, from the asset layer, its URL and sha256. `source` is
    'pretrained' only when neither is a substitute; `paper_configuration` also needs the
    paper's steps, batch size, image size and fp32 training.
    """
    cache_dir = Path(cache_dir)
    size = settings.model_size
    if settings.image_size < MIN_IMAGE_SIZE:
        msg = (
            f"efficientad.image_size {settings.image_size} is too small: anomalib's EfficientAD "
            f"autoencoder needs at least {MIN_IMAGE_SIZE} px"
        )
        raise ValueError(msg)
    teacher_path, teacher, teacher_missing = pretrained_teacher(settings, assets)
    penalty_dir, penalty, penalty_missing = imagenette_penalty(settings, assets)
    missing = [status for status in (teacher_missing, penalty_missing) if status is not None]
    if missing and not assets.fallback_allowed:
        raise MissingAssetsError(missing, fetch_command, assets.download)
    if teacher_missing is not None:
        logger.warning(
            "EfficientAD teacher: %s; using %s", teacher_missing.problem, TEACHER_FALLBACK
        )
        teacher_path, label = distilled_teacher(
            size, settings.teacher_distill_steps, TEACHER_SEED, cache_dir, device
        )
        teacher = {"teacher": label, "teacher_source": "fallback"}
    if penalty_missing is not None:
        logger.warning(
            "EfficientAD penalty images: %s; using %s", penalty_missing.problem, PENALTY_FALLBACK
        )
        penalty_dir, penalty = penalty_photos(cache_dir)

    pre_processor = PreProcessor(transform=model_resize(settings.image_size))
    module_kwargs.setdefault("pre_processor", pre_processor)
    model = OfflineEfficientAd(
        teacher_path=str(teacher_path),
        imagenet_dir=str(penalty_dir),
        penalty_random_crops=penalty_missing is not None,  # a few photos: vary the crops
        model_size=size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        **module_kwargs,
    )
    model.prepare_pretrained_model()
    precision = resolve_training_precision(settings.training_precision, device)
    provenance = {
        **teacher,
        **penalty,
        "source": "fallback" if missing else "pretrained",
        "training_precision": precision,
        "paper_configuration": not missing
        and settings.max_steps >= 70_000
        and settings.train_batch_size == 1
        and settings.image_size == 256
        and precision == PAPER_PRECISION,
    }
    return model, provenance


def build(settings: EfficientAdSettings, context: BuildContext) -> tuple[OfflineEfficientAd, dict]:
    """The registry's builder: `build_efficientad` with the training precision resolved
    for the device it trains on, in the layout its training is fastest in on a CPU."""
    resolved = resolve_training_precision(settings.training_precision, context.device)
    settings = settings.model_copy(update={"training_precision": resolved})
    model, provenance = build_efficientad(
        settings,
        context.weights_dir,
        context.assets,
        device=context.device,
        fetch_command=context.fetch_command,
    )
    if context.device == "cpu":
        model.model.to(memory_format=cpu_training_layout())
    return model, provenance


def needs(settings: EfficientAdSettings, assets: AssetSettings) -> list[Need]:
    """The registry entry's assets: anomalib's teacher unless `teacher_weights` names a
    file, imagenette unless `imagenet_dir` names a folder; each with its substitute where
    `assets.allow_fallback` allows one."""
    allowed = assets.allow_fallback
    found = []
    if settings.teacher_weights is None:
        teacher_fallback = TEACHER_FALLBACK if allowed else None
        found.append(Need(efficientad_teachers(assets), "efficientad", teacher_fallback))
    if settings.imagenet_dir is None:
        penalty_fallback = PENALTY_FALLBACK if allowed else None
        found.append(Need(imagenette(assets), "efficientad", penalty_fallback))
    return found


def prepare(settings: EfficientAdSettings, context: BuildContext) -> None:
    """Once per run, before its cells, on a worker of the run's cluster: when anomalib's
    teacher cannot be had and a substitute is allowed, distil it now, on this worker's
    device, into the weights folder the cells load it from (`distilled_teacher` locks
    and writes atomically, so a cell that starts meanwhile waits for it)."""
    if settings.teacher_weights is not None or not context.assets.fallback_allowed:
        return
    if resolve_asset(efficientad_teachers(context.assets), context.assets).present:
        return
    distilled_teacher(
        settings.model_size,
        settings.teacher_distill_steps,
        TEACHER_SEED,
        context.weights_dir,
        context.device,
    )


def trainer_args(settings: EfficientAdSettings, device: str) -> dict:
    """Lightning trainer arguments: the planned step count, the resolved precision."""
    precision = resolve_training_precision(settings.training_precision, device)
    return {"max_steps": settings.max_steps, "precision": precision}


def weight_files(settings: EfficientAdSettings, weights_dir: Path) -> list[Path]:
    """Files a build may load besides the weights folder and its assets: a configured
    teacher, and the EfficientNet-Lite0 weights the substitute teacher is distilled from."""
    files = [Path(settings.teacher_weights)] if settings.teacher_weights else []
    return [*files, *lite0_weight_files()]
