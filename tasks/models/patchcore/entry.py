"""PatchCore's registry entry: a one-shot fit of its memory bank on a pretrained timm
backbone, which it declares as its asset (Lite0 its substitute, where allowed)."""

from __future__ import annotations

from tasks.models.entry import ModelEntry
from tasks.models.patchcore.settings import PROFILE_SETTINGS, PatchCoreSettings


def _build(settings, context):
    from tasks.models.patchcore.model import build

    return build(settings, context)


def _assets(settings, assets):
    from tasks.models.patchcore.model import needs

    return needs(settings, assets)


def _weight_files(settings, weights_dir):
    from tasks.models.patchcore.model import weight_files

    return weight_files(settings, weights_dir)


PATCHCORE = ModelEntry(
    name="patchcore",
    display_name="PatchCore",
    settings=PatchCoreSettings,
    build=_build,
    gradient=False,
    profile_settings=PROFILE_SETTINGS,
    weight_files=_weight_files,
    assets=_assets,
)
