"""What every asset is and says about itself, and the short probe of its source.

An `Asset` knows its name, kind, source (a URL, or `hf://repo/file` for the hub), the
sha256 its source publishes (where it does), its size (when known) and the local path it
is cached at. It says whether it is present without touching the network (`present`),
asks its source whether it answers (`probe`, bounded by a timeout, never hanging) and
downloads itself with its library's own code (`download`). The policy, the lock and the
error messages live in `tasks.assets.fetch`.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tasks.runtime.asset_settings import AssetSettings


class AssetUnavailableError(FileNotFoundError):
    """An asset is not on this host and could not be fetched; `reason` says why.

    A FileNotFoundError, not a ConnectionError: a run that cannot have its weights
    fails the same way when retried (see tasks.retries)."""

    def __init__(self, asset: Asset, reason: str, offline: bool = False) -> None:
        super().__init__(f"{asset.label()}: {reason}")
        self.asset = asset
        self.reason = reason
        self.offline = offline


class HashMismatchError(ValueError):
    """A downloaded or carried file does not have the sha256 its source publishes."""


@dataclass(frozen=True)
class Probe:
    """A source's answer to a short request: it serves the asset, or why it does not.

    `offline` is True only when no connection could be made at all."""

    ok: bool
    reason: str = ""
    offline: bool = False
    size: int | None = None
    sha256: str | None = None
    detail: str | None = None  # what the source named, e.g. which hub file exists


@dataclass(frozen=True)
class Asset(ABC):
    """One external file or folder a run may need."""

    name: str
    kind: str  # "backbone", "weights" or "dataset"
    description: str

    @property
    @abstractmethod
    def source(self) -> str:
        """Where it comes from: a URL, or `hf://<repo>/<file>`."""

    @property
    @abstractmethod
    def sha256(self) -> str | None:
        """The hash the source publishes ahead of the download, if it does."""

    @property
    @abstractmethod
    def path(self) -> Path:
        """Where it is (or will be) cached: the file or folder its user reads."""

    @property
    @abstractmethod
    def cache_root(self) -> Path:
        """The folder it is written under; its lock lives in `<cache_root>/.locks`."""

    @abstractmethod
    def present(self) -> bool:
        """True when it is complete on disk; never touches the network."""

    @abstractmethod
    def local_path(self) -> Path | None:
        """The file or folder to read, when present."""

    @abstractmethod
    def probe(self, settings: AssetSettings) -> Probe:
        """Ask the source whether it serves the asset, within `settings.timeout_s`."""

    @abstractmethod
    def download(self, probe: Probe, settings: AssetSettings) -> Path:
        """Fetch it with the library's own code, verify it, write it atomically.

        Called under the asset's lock, after a successful `probe`; raises
        `AssetUnavailableError` or `HashMismatchError` and leaves no partial file."""

    def local_sha256(self) -> str | None:
        """The sha256 the local copy was verified against, when it is known without
        hashing the file again (for provenance); None otherwise."""
        return None

    def local_size(self) -> int | None:
        """Bytes on disk when present."""
        path = self.local_path()
        if path is None:
            return None
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    def lock_path(self) -> Path:
        return self.cache_root / ".locks" / f"anomaly-benchmark-{_safe(self.name)}.lock"

    def label(self) -> str:
        return f"{self.name} ({self.description})"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bounded_probe(call: Callable[[], Probe], timeout_s: float, what: str) -> Probe:
    """`call()`, or a failed `Probe` naming `what` when it has not returned in time.

    Runs in a daemon thread: a socket timeout does not cover a hung name lookup."""
    result: list = []

    def run() -> None:
        try:
            result.append(("value", call()))
        except BaseException as err:  # noqa: BLE001 - handed back to the caller's thread
            result.append(("error", err))

    thread = threading.Thread(target=run, daemon=True, name=f"probe {what}")
    thread.start()
    thread.join(timeout_s)
    if not result:
        return Probe(ok=False, reason=f"no answer from {what} within {timeout_s:g} s")
    kind, value = result[0]
    if kind == "error":
        raise value
    return value


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def connect_failure(host: str, err: BaseException) -> Probe:
    reason = getattr(err, "reason", None) or err
    return Probe(
        ok=False,
        offline=True,
        reason=f"cannot connect to {host} ({reason}): this host is offline or cannot reach {host}",
    )


def no_answer(host: str, timeout_s: float) -> Probe:
    return Probe(
        ok=False,
        reason=f"{host} accepted the connection but did not answer within {timeout_s:g} s",
    )


def http_failure(url: str, status: int) -> Probe:
    meaning = {401: "unauthorised", 403: "forbidden", 404: "not found"}.get(status)
    return Probe(ok=False, reason=f"HTTP {status}{f' ({meaning})' if meaning else ''} from {url}")


def probe_url(url: str, timeout_s: float) -> Probe:
    """HEAD `url` (redirects followed), bounded by `timeout_s` overall and per request.

    A connection that cannot be made means offline; one that is made but not answered
    is a timeout; an HTTP error is reported with its status. 405 (no HEAD) counts as an
    answer. urllib honours the usual proxy variables, as anomalib's `urlretrieve` does.
    """
    host = host_of(url)

    def head() -> Probe:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
                length = response.headers.get("Content-Length")
                return Probe(ok=True, size=int(length) if length and length.isdigit() else None)
        except urllib.error.HTTPError as err:
            if err.code == 405:
                return Probe(ok=True)
            return http_failure(url, err.code)
        except urllib.error.URLError as err:
            # urllib wraps errors of connecting (and sending) in URLError ...
            return connect_failure(host, err)
        except TimeoutError:
            # ... and lets a timeout while waiting for the answer through as it is
            return no_answer(host, timeout_s)
        except (OSError, http.client.HTTPException) as err:
            return Probe(ok=False, reason=f"{host} broke off the answer ({err!r})")

    return bounded_probe(head, timeout_s * 2, host)
