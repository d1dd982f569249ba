"""The asset layer: every external file a run may need, fetched with its library's own
download code, verified, cached once for all workers, and named when it is missing.

Assets:
- timm backbones (`timm_backbone("wide_resnet50_2", settings)`): the Hugging Face hub
  file `timm.create_model(name, pretrained=True)` loads (anomalib's
  `TimmFeatureExtractor`), fetched with `huggingface_hub.hf_hub_download` into the hub
  cache, verified against the sha256 the hub publishes;
- anomalib's EfficientAD teachers (`efficientad_teachers`, one zip with small and medium)
  and imagenette (`imagenette`), from anomalib's `DownloadInfo` (URL and sha256), fetched
  with anomalib's `download_and_extract`;
- datasets: MVTec AD (`mvtec_ad`), by name in `DATASETS`.

Policy (`AssetSettings`, the profile's `assets`): `download` 'auto' fetches a missing
asset when its source answers within `timeout_s` (a short HEAD, never a hang); 'never'
uses local files only; 'required' refuses every fallback. `allow_fallback` says whether
a model's named substitute may replace a missing asset. `ANOMALY_BENCHMARK_ASSETS_DIR`
(or `assets.dir`) points every asset at one folder, e.g. one carried to an air-gapped host.

Which assets a model needs, and its substitutes, is said by its registry entry
(`tasks.models.registry.required_assets` gathers them into an `AssetPlan`); this
package knows no model, and imports nothing from the stages above it.

Example:
    >>> plan = registry.required_assets(load_profile("paper"), ["patchcore", "efficientad"])
    >>> statuses = prepare_assets(plan)  # MissingAssetsError names what is missing
    >>> statuses["wide_resnet50_2"].path  # the safetensors file timm reads
    PosixPath('.../models--timm--wide_resnet50_2.racm_in1k/snapshots/.../model.safetensors')

See Also:
    flows/fetch_assets.py: fetch a profile's assets ahead, or `--check` them.
"""

from tasks.assets.archives import (
    DATASETS,
    ArchiveAsset,
    TeacherWeights,
    efficientad_teachers,
    imagenette,
    mvtec_ad,
)
from tasks.assets.base import Asset, AssetUnavailableError, HashMismatchError, Probe
from tasks.assets.fetch import (
    AssetStatus,
    MissingAssetsError,
    check_assets,
    fetch_asset,
    prepare_assets,
    probe_missing,
    resolve_asset,
)
from tasks.assets.hub import HubWeights, timm_backbone
from tasks.assets.needs import AssetPlan, Need, dataset_need, fetch_command, plan_assets
from tasks.runtime.asset_settings import ASSETS_DIR_ENV, AssetSettings, DownloadPolicy

__all__ = [
    "ASSETS_DIR_ENV",
    "DATASETS",
    "ArchiveAsset",
    "Asset",
    "AssetPlan",
    "AssetSettings",
    "AssetStatus",
    "AssetUnavailableError",
    "DownloadPolicy",
    "HashMismatchError",
    "HubWeights",
    "MissingAssetsError",
    "Need",
    "Probe",
    "TeacherWeights",
    "check_assets",
    "dataset_need",
    "efficientad_teachers",
    "fetch_asset",
    "fetch_command",
    "imagenette",
    "mvtec_ad",
    "plan_assets",
    "prepare_assets",
    "probe_missing",
    "resolve_asset",
    "timm_backbone",
]
