"""Archives that anomalib downloads itself: EfficientAD's teachers, imagenette, MVTec AD.

Each one is anomalib's own `DownloadInfo` (URL and sha256), fetched with anomalib's own
`download_and_extract`, which downloads with `urlretrieve`, checks the hash and extracts.
Around it, `ArchiveAsset` adds what a shared cache needs:

- the download and extraction happen in a private staging folder beside the target
  folder (same file system), and the extracted entries are renamed into place only once
  the hash is verified; a failed or refused download is removed with its staging folder;
- an archive already lying in the target folder (carried over by hand, e.g. MVTec AD
  fetched with a browser) is verified with anomalib's `check_hash` and extracted
  without a download; anomalib itself would extract it unverified;
- a marker `.<name>.verified.json` records the archive's URL, sha256 and size.

Example:
    >>> teacher = efficientad_teachers(AssetSettings())
    >>> teacher.teacher_file("small").name
    'pretrained_teacher_small.pth'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.assets.base import (
    Asset,
    AssetUnavailableError,
    HashMismatchError,
    Probe,
    probe_url,
    sha256_of,
)
from tasks.runtime.asset_settings import AssetSettings

if TYPE_CHECKING:
    from anomalib.data.utils import DownloadInfo

logger = logging.getLogger(__name__)

TEACHER_FOLDER = "efficientad_pretrained_weights"  # as anomalib's prepare_pretrained_model
TEACHER_SIZES = ("small", "medium")
IMAGENETTE_FOLDER = "imagenette2"
MVTEC_FOLDER = "mvtec_ad"  # under the datasets folder, when no dataset root is given
STAGING_PREFIX = ".staging-"
_SOCKET_TIMEOUT_LOCK = threading.Lock()


@dataclass(frozen=True)
class ArchiveAsset(Asset):
    """An archive anomalib downloads and extracts into `root`; present when every path
    in `contents` (relative to `root`) exists."""

    info: Any = None  # anomalib.data.utils.DownloadInfo
    root: Path = field(default_factory=Path)
    contents: tuple[str, ...] = ()
    target: str = ""  # the entry of `root` its user reads; "" = `root` itself

    @property
    def source(self) -> str:
        return self.info.url

    @property
    def sha256(self) -> str | None:
        return self.info.hashsum

    @property
    def path(self) -> Path:
        return self.root / self.target if self.target else self.root

    @property
    def cache_root(self) -> Path:
        # the lock and the staging folder sit beside `root`, not in it: a reader such as
        # torchvision's ImageFolder (imagenette) takes every folder in `root` for a class
        return self.root.parent

    @property
    def archive_name(self) -> str:
        return self.info.filename or self.info.url.split("/")[-1]

    @property
    def marker(self) -> Path:
        return self.root / f".{self.name}.verified.json"

    def present(self) -> bool:
        return all((self.root / entry).exists() for entry in self.contents)

    def local_path(self) -> Path | None:
        return self.path if self.present() else None

    def local_sha256(self) -> str | None:
        """The archive's sha256 from the marker this layer wrote after verifying it; None
        for a copy made otherwise (e.g. by anomalib itself, or by hand)."""
        if not self.present() or not self.marker.is_file():
            return None
        recorded = json.loads(self.marker.read_text())
        return recorded.get("sha256") if recorded.get("url") == self.info.url else None

    def missing_contents(self) -> list[str]:
        return [entry for entry in self.contents if not (self.root / entry).exists()]

    def carried_archive(self) -> Path | None:
        """The archive itself, left in `root` by hand, if it is there."""
        candidate = self.root / self.archive_name
        return candidate if candidate.is_file() else None

    def probe(self, settings: AssetSettings) -> Probe:
        if self.carried_archive() is not None:
            return Probe(ok=True, size=self.carried_archive().stat().st_size, detail="carried")
        return probe_url(self.info.url, settings.timeout_s)

    def download(self, probe: Probe, settings: AssetSettings) -> Path:
        from anomalib.data.utils.download import check_hash, download_and_extract

        self.root.mkdir(parents=True, exist_ok=True)
        prefix = f"{STAGING_PREFIX}{self.name}-"
        _remove_stale_staging(self.cache_root, prefix)
        staging = self.cache_root / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        archive = staging / self.archive_name
        started = time.perf_counter()
        try:
            carried = self.carried_archive()
            if carried is not None:
                logger.info("%s: verifying the archive found at %s", self.name, carried)
                try:
                    check_hash(carried, self.info.hashsum)
                except ValueError as err:
                    carried.unlink(missing_ok=True)
                    raise HashMismatchError(
                        f"hash mismatch for {self.name}: {err} The archive was removed."
                    ) from None
                # download_and_extract finds it, skips the download and extracts it
                carried.replace(archive)
            else:
                logger.info(
                    "fetching %s: %s%s into %s",
                    self.name,
                    self.info.url,
                    f" ({probe.size / 1e6:.1f} MB)" if probe.size else "",
                    self.root,
                )
            try:
                with _socket_timeout(settings.stall_timeout_s):
                    # download, anomalib's hash check, extraction, removal of the archive
                    download_and_extract(staging, self.info)
            except ValueError as err:
                if archive.is_file() and sha256_of(archive) != self.info.hashsum:
                    raise HashMismatchError(
                        f"hash mismatch for {self.name}: {err} The file was removed."
                    ) from None
                raise AssetUnavailableError(
                    self, f"could not extract {archive.name}: {err}"
                ) from err
            except TimeoutError:
                raise AssetUnavailableError(
                    self, f"the download stalled: no data for {settings.stall_timeout_s:g} s"
                ) from None
            except OSError as err:
                raise AssetUnavailableError(self, f"download failed: {err}") from err
            for entry in sorted(staging.iterdir()):
                destination = self.root / entry.name
                if destination.is_dir() and not destination.is_symlink():
                    shutil.rmtree(destination)  # an incomplete copy; the lock holder replaces it
                entry.replace(destination)
            _write_json(
                self.marker,
                {
                    "name": self.name,
                    "url": self.info.url,
                    "sha256": self.info.hashsum,
                    "archive": self.archive_name,
                    "archive_bytes": probe.size,
                },
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not self.present():
            missing = ", ".join(self.missing_contents())
            raise AssetUnavailableError(
                self, f"the verified archive {self.archive_name} does not hold {missing}"
            )
        logger.info("%s ready at %s (%.0f s)", self.name, self.path, time.perf_counter() - started)
        return self.path


@dataclass(frozen=True)
class TeacherWeights(ArchiveAsset):
    """anomalib's EfficientAD teachers: one zip holds the small and the medium one."""

    def teacher_file(self, size: str) -> Path:
        """`pretrained_teacher_<size>.pth`, where anomalib's `prepare_pretrained_model`
        reads it (relative to its `pre_trained` folder)."""
        if size not in TEACHER_SIZES:
            raise ValueError(f"EfficientAD model_size {size!r}: choose one of {TEACHER_SIZES}")
        return self.root / TEACHER_FOLDER / f"pretrained_teacher_{size}.pth"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """A read timeout for anomalib's `urlretrieve`, which takes none: the default for
    sockets opened meanwhile, restored afterwards (one download at a time sets it)."""
    with _SOCKET_TIMEOUT_LOCK:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(seconds)
        try:
            yield
        finally:
            socket.setdefaulttimeout(previous)


def _remove_stale_staging(folder: Path, prefix: str) -> None:
    """Staging folders of downloads killed midway (the caller holds the asset's lock)."""
    for stale in folder.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def efficientad_teachers(
    settings: AssetSettings, info: DownloadInfo | None = None
) -> TeacherWeights:
    """anomalib's pretrained EfficientAD teachers (`WEIGHTS_DOWNLOAD_INFO`)."""
    from anomalib.models.image.efficient_ad.lightning_model import WEIGHTS_DOWNLOAD_INFO

    return TeacherWeights(
        name="efficientad-teacher",
        kind="weights",
        description="anomalib's pretrained EfficientAD teachers, small and medium",
        info=info or WEIGHTS_DOWNLOAD_INFO,
        root=settings.anomalib_weights_dir(),
        contents=tuple(f"{TEACHER_FOLDER}/pretrained_teacher_{s}.pth" for s in TEACHER_SIZES),
        target=TEACHER_FOLDER,
    )


def imagenette(settings: AssetSettings, info: DownloadInfo | None = None) -> ArchiveAsset:
    """imagenette (`IMAGENETTE_DOWNLOAD_INFO`), EfficientAD's penalty images. Its `path`
    is what `EfficientAd(imagenet_dir=...)` takes: the folder the archive is extracted in."""
    from anomalib.models.image.efficient_ad.lightning_model import IMAGENETTE_DOWNLOAD_INFO

    return ArchiveAsset(
        name="imagenette",
        kind="dataset",
        description="imagenette, EfficientAD's penalty images",
        info=info or IMAGENETTE_DOWNLOAD_INFO,
        root=settings.datasets_dir() / "imagenette",
        contents=(f"{IMAGENETTE_FOLDER}/train", f"{IMAGENETTE_FOLDER}/val"),
    )


def mvtec_ad(
    settings: AssetSettings,
    root: str | Path | None = None,
    categories: Sequence[str] | None = None,
    info: DownloadInfo | None = None,
) -> ArchiveAsset:
    """MVTec AD (anomalib's `mvtecad.DOWNLOAD_INFO`: one archive of all 15 categories),
    present when each of `categories` (default: all) has train/, test/ and ground_truth/.
    `root` is the dataset root (the benchmark's `data_root`); default `<datasets>/mvtec_ad`."""
    from anomalib.data.datamodules.image.mvtecad import DOWNLOAD_INFO
    from anomalib.data.datasets.image.mvtecad import CATEGORIES

    wanted = tuple(categories) if categories else tuple(CATEGORIES)
    unknown = [c for c in wanted if c not in CATEGORIES]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not an MVTec AD category; it has {', '.join(CATEGORIES)}"
        )
    base = Path(root).expanduser().absolute() if root else settings.datasets_dir() / MVTEC_FOLDER
    return ArchiveAsset(
        name="mvtec_ad",
        kind="dataset",
        description=f"MVTec AD, {len(wanted)} of its {len(CATEGORIES)} categories",
        info=info or DOWNLOAD_INFO,
        root=base,
        contents=tuple(f"{c}/{part}" for c in wanted for part in ("train", "test", "ground_truth")),
    )


# Datasets the asset layer can fetch, by the benchmark's dataset name; a later dataset
# (e.g. anomalib's VisA) is one more factory here.
DATASETS = {"mvtec": mvtec_ad}
