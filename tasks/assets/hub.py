"""timm backbones from the Hugging Face hub, fetched as timm fetches them.

`timm.create_model(name, pretrained=True)`, which anomalib's `TimmFeatureExtractor`
calls, resolves `name` to its pretrained config's `hf_hub_id` and downloads
`model.safetensors` (else `pytorch_model.bin`, or the config's `hf_hub_filename`) with
`huggingface_hub.hf_hub_download` into the hub cache. `HubWeights` fetches the same file
with the same function into the same cache layout, so afterwards timm finds it with
`HF_HUB_OFFLINE=1`, and verifies it against the sha256 the hub publishes as the file's
ETag (`X-Linked-Etag`: git-LFS files are addressed by their sha256).

Example:
    >>> asset = timm_backbone("wide_resnet50_2", AssetSettings())
    >>> asset.source
    'hf://timm/wide_resnet50_2.racm_in1k/model.safetensors'
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tasks.assets.base import (
    Asset,
    AssetUnavailableError,
    HashMismatchError,
    Probe,
    bounded_probe,
    connect_failure,
    host_of,
    http_failure,
    no_answer,
    sha256_of,
)
from tasks.runtime.asset_settings import AssetSettings

logger = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-f]{64}")
# timm's order (timm.models._hub.load_state_dict_from_hf): the safetensors file first
TIMM_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm_candidates(hf_hub_filename: str | None) -> tuple[str, ...]:
    if not hf_hub_filename:
        return TIMM_DEFAULT_FILES
    if hf_hub_filename.endswith(".safetensors"):
        return (hf_hub_filename,)
    if hf_hub_filename.endswith(".bin"):
        return (hf_hub_filename[: -len(".bin")] + ".safetensors", hf_hub_filename)
    return (hf_hub_filename,)


def hub_endpoint() -> str | None:
    """`HF_ENDPOINT`, read at each call (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


@dataclass(frozen=True)
class HubWeights(Asset):
    """A weights file in a Hugging Face hub model repository, cached in `hub_cache`."""

    repo_id: str = ""
    revision: str | None = None
    filenames: tuple[str, ...] = TIMM_DEFAULT_FILES  # first that the repo holds is fetched
    hub_cache: Path = field(default_factory=Path)

    @property
    def source(self) -> str:
        return f"hf://{self.repo_id}/{self.filenames[0]}"

    @property
    def sha256(self) -> str | None:
        return None  # published by the hub with the file (its ETag), read by `probe`

    @property
    def path(self) -> Path:
        return self.hub_cache / f"models--{self.repo_id.replace('/', '--')}"

    @property
    def cache_root(self) -> Path:
        return self.hub_cache

    def local_path(self) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        for filename in self.filenames:
            hit = try_to_load_from_cache(
                self.repo_id, filename, cache_dir=self.hub_cache, revision=self.revision
            )
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
        return None

    def present(self) -> bool:
        return self.local_path() is not None

    def local_sha256(self) -> str | None:
        # the hub cache names a git-LFS blob by its sha256 (verified when it was fetched)
        path = self.local_path()
        name = path.resolve().name if path is not None else ""
        return name if SHA256.fullmatch(name) else None

    def probe(self, settings: AssetSettings) -> Probe:
        """huggingface_hub's own HEAD (`get_hf_file_metadata`), once per candidate file."""
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import (
            FileMetadataError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
        )

        if constants.is_offline_mode():
            return Probe(ok=False, reason="HF_HUB_OFFLINE is set: huggingface_hub does no requests")
        endpoint = hub_endpoint()
        timeout = settings.timeout_s

        def head() -> Probe:
            missing = []
            for filename in self.filenames:
                url = hf_hub_url(self.repo_id, filename, revision=self.revision, endpoint=endpoint)
                try:
                    meta = get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint)
                except RemoteEntryNotFoundError:
                    missing.append(filename)
                    continue
                except HfHubHTTPError as err:
                    return http_failure(url, err.response.status_code)
                except OfflineModeIsEnabled as err:
                    return Probe(ok=False, reason=str(err))
                except FileMetadataError as err:
                    return Probe(ok=False, reason=f"{host_of(url)} is not a hub endpoint: {err}")
                except Exception as err:  # noqa: BLE001 - sorted below by kind
                    return _transport_failure(host_of(url), err, timeout)
                etag = (meta.etag or "").strip('"').lower()
                return Probe(
                    ok=True,
                    size=meta.size,
                    sha256=etag if SHA256.fullmatch(etag) else None,
                    detail=filename,
                )
            return Probe(
                ok=False,
                reason=f"HTTP 404 (not found): {self.repo_id} holds none of {', '.join(missing)}",
            )

        return bounded_probe(
            head, timeout * (len(self.filenames) + 1), host_of(endpoint or constants.ENDPOINT)
        )

    def download(self, probe: Probe, settings: AssetSettings) -> Path:
        from huggingface_hub import hf_hub_download

        filename = probe.detail or self.filenames[0]
        logger.info(
            "fetching %s: hf://%s/%s%s into %s",
            self.name,
            self.repo_id,
            filename,
            f" ({probe.size / 1e6:.1f} MB)" if probe.size else "",
            self.hub_cache,
        )
        try:
            path = Path(
                hf_hub_download(
                    self.repo_id,
                    filename,
                    revision=self.revision,
                    cache_dir=self.hub_cache,
                    endpoint=hub_endpoint(),
                    etag_timeout=settings.timeout_s,
                    tqdm_class=_progress_logger(self.name),
                )
            )
        except Exception as err:
            raise AssetUnavailableError(self, f"download failed: {err}") from err
        if probe.sha256 is not None:
            _verify_or_remove(self, path, probe.sha256)
        return path


def _transport_failure(host: str, err: BaseException, timeout_s: float) -> Probe:
    """Sort huggingface_hub's HTTP-client errors by their class names (httpx in
    huggingface_hub 1.x, httpx2 in 2.x): a failed connect, or no answer in time."""
    names = {cls.__name__ for cls in type(err).__mro__}
    if names & {"ConnectError", "ConnectTimeout"}:
        return connect_failure(host, err)
    if "TimeoutException" in names:
        return no_answer(host, timeout_s)
    return Probe(ok=False, reason=f"{host}: {type(err).__name__}: {err}")


def _verify_or_remove(asset: HubWeights, pointer: Path, expected: str) -> None:
    """Keep the blob only if its sha256 is the one the hub published; else remove the
    blob and the snapshot entry pointing at it, so nothing half-trusted stays cached."""
    blob = pointer.resolve()
    actual = sha256_of(blob)
    if actual == expected:
        return
    pointer.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)
    raise HashMismatchError(
        f"hash mismatch for {asset.name}: the downloaded hf://{asset.repo_id}/{pointer.name} "
        f"has sha256 {actual}, the hub publishes {expected}; the file was removed"
    )


def _progress_logger(name: str) -> type[tqdm]:
    """A tqdm class for `hf_hub_download` that logs every tenth of the download instead
    of drawing a bar (log lines reach the Prefect UI, carriage returns do not)."""

    class LoggedProgress(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            self._logged_tenth = -1  # before tqdm's __init__, which displays
            kwargs["mininterval"] = 0
            kwargs["file"] = io.StringIO()  # nothing drawn: `display` logs instead
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            if self.total:
                tenth = int(10 * self.n / self.total)
                if tenth > self._logged_tenth:
                    self._logged_tenth = tenth
                    logger.info("%s: %d%% of %.1f MB", name, 10 * tenth, self.total / 1e6)
            return True

    return LoggedProgress


def timm_backbone(name: str, settings: AssetSettings) -> HubWeights:
    """The hub file timm loads for `name` (any timm model name, with or without tag)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as err:
        raise ValueError(f"timm knows no model {name!r}: {err}") from None
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(
            f"timm model {name!r} has no pretrained weights on the Hugging Face hub "
            "(its pretrained config names no hf_hub_id)"
        )
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    return HubWeights(
        name=name,
        kind="backbone",
        description=f"timm {name} pretrained weights",
        repo_id=repo_id,
        revision=revision or None,
        filenames=_timm_candidates(cfg.hf_hub_filename),
        hub_cache=settings.hub_cache(),
    )
