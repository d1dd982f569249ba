"""EfficientAD's registry entry: gradient training, anomalib's teacher and imagenette as
its assets (a distilled teacher and photos their substitutes, where allowed, the teacher
prepared once per run), and a cheaper exported graph."""

from __future__ import annotations

from tasks.inference.deployment import Deployment
from tasks.models.efficientad.settings import PROFILE_SETTINGS, EfficientAdSettings
from tasks.models.entry import ModelEntry


def _build(settings, context):
    from tasks.models.efficientad.model import build

    return build(settings, context)


def _trainer_args(settings, device):
    from tasks.models.efficientad.model import trainer_args

    return trainer_args(settings, device)


def _weight_files(settings, weights_dir):
    from tasks.models.efficientad.model import weight_files

    return weight_files(settings, weights_dir)


def _assets(settings, assets):
    from tasks.models.efficientad.model import needs

    return needs(settings, assets)


def _prepare(settings, context):
    from tasks.models.efficientad.model import prepare

    prepare(settings, context)


def _deployed_graph(model):
    from tasks.models.efficientad.deploy import deployed_graph

    return deployed_graph(model)


EFFICIENTAD = ModelEntry(
    name="efficientad",
    display_name="EfficientAD",
    settings=EfficientAdSettings,
    build=_build,
    gradient=True,
    profile_settings=PROFILE_SETTINGS,
    trainer_args=_trainer_args,
    weight_files=_weight_files,
    assets=_assets,
    prepare=_prepare,
    # its exported graph is `DeployedEfficientAd`; int8 keeps the arithmetic between its
    # networks in fp32 (tasks.models.efficientad.deploy says why)
    deployment=Deployment(export_graph=_deployed_graph, int8_fp32_top_level=True),
)
