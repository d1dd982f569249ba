"""The download policy, applied to one asset or to a run's list of them.

- `resolve_asset(asset, settings)`: present -> its path, with no network; else, unless
  `download == "never"`, probe the source (bounded by `timeout_s`) and fetch it under the
  asset's file lock. Returns an `AssetStatus`; never raises for an asset it cannot have.
- `fetch_asset`: the same, raising `AssetUnavailableError` with the reason.
- `check_assets`: present or missing, size and path, without any network.
- `prepare_assets(plan)`: the pre-flight check: every asset the plan lists is resolved;
  `MissingAssetsError` names each one that is needed and missing, where it looked, why,
  and the command that fetches them (and nothing is downloaded when one is).

One cache folder serves every worker of a run: the first to take an asset's lock fetches
it, the others wait on the lock and then find it present.

Example:
    >>> plan = registry.required_assets(load_profile("paper"), ["patchcore", "efficientad"])
    >>> statuses = prepare_assets(plan)  # raises MissingAssetsError when one is missing
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from tasks.assets.base import Asset, AssetUnavailableError, HashMismatchError, Probe
from tasks.runtime.asset_settings import ASSETS_DIR_ENV, AssetSettings

if TYPE_CHECKING:
    from tasks.assets.needs import AssetPlan, Need

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssetStatus:
    """Where an asset stands after a check or a fetch."""

    asset: Asset
    present: bool
    path: Path | None = None  # the file or folder to read, when present
    size: int | None = None  # bytes on disk when present, else as the source announced
    problem: str | None = None  # why it is missing
    offline: bool = False  # the probe could not connect at all
    fetched: bool = False  # downloaded by this call
    sha256: str | None = None  # what the local copy was verified against, when known

    def line(self) -> str:
        """One line of the `--check` listing."""
        state = "present" if self.present else "missing"
        size = _human(self.size) if self.size is not None else "-"
        where = self.path if self.present else self.asset.path
        text = f"{self.asset.name:<24} {self.asset.kind:<9} {state:<8} {size:>9}  {where}"
        return text if self.present or not self.problem else f"{text}\n{'':<26}{self.problem}"


def _human(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def _found(asset: Asset, fetched: bool = False) -> AssetStatus:
    return AssetStatus(
        asset=asset,
        present=True,
        path=asset.local_path(),
        size=asset.local_size(),
        fetched=fetched,
        sha256=asset.local_sha256(),
    )


def check_assets(assets: Sequence[Asset]) -> list[AssetStatus]:
    """Present or missing, per asset, from local files only."""
    return [_found(a) if a.present() else AssetStatus(asset=a, present=False) for a in assets]


def _unavailable(asset: Asset, settings: AssetSettings, probe: Probe | None) -> AssetStatus:
    if probe is None:
        problem = f"not found at {asset.path}, and assets.download is 'never'"
        return AssetStatus(asset=asset, present=False, problem=problem)
    return AssetStatus(
        asset=asset,
        present=False,
        problem=f"not found at {asset.path}; {asset.source}: {probe.reason}",
        offline=probe.offline,
    )


def probe_missing(asset: Asset, settings: AssetSettings) -> AssetStatus | None:
    """Without downloading: None when `asset` is present or its source serves it now,
    else why it cannot be had."""
    if asset.present():
        return None
    if settings.download == "never":
        return _unavailable(asset, settings, None)
    probe = asset.probe(settings)
    return None if probe.ok else _unavailable(asset, settings, probe)


def resolve_asset(asset: Asset, settings: AssetSettings) -> AssetStatus:
    """The asset's local copy, fetched first when the policy allows and the source answers."""
    if asset.present():
        return _found(asset)
    if settings.download == "never":
        return _unavailable(asset, settings, None)
    lock_path = asset.lock_path()
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock_path, timeout=settings.lock_timeout_s):
            if asset.present():  # another worker fetched it while this one waited
                logger.info("%s: fetched meanwhile by another worker", asset.name)
                return _found(asset)
            probe = asset.probe(settings)
            if not probe.ok:
                return _unavailable(asset, settings, probe)
            started = time.perf_counter()
            asset.download(probe, settings)
            logger.info("%s fetched in %.1f s", asset.name, time.perf_counter() - started)
    except Timeout:
        problem = (
            f"another process has held {lock_path} for over {settings.lock_timeout_s:g} s "
            "(assets.lock_timeout_s) while fetching it"
        )
        return AssetStatus(asset=asset, present=False, problem=problem)
    except (AssetUnavailableError, HashMismatchError) as err:
        reason = err.reason if isinstance(err, AssetUnavailableError) else str(err)
        return AssetStatus(asset=asset, present=False, problem=f"{asset.source}: {reason}")
    return _found(asset, fetched=True)


def fetch_asset(asset: Asset, settings: AssetSettings) -> Path:
    """The asset's local path, fetched if needed; `AssetUnavailableError` otherwise."""
    status = resolve_asset(asset, settings)
    if not status.present or status.path is None:
        raise AssetUnavailableError(asset, status.problem or "missing", status.offline)
    return status.path


class MissingAssetsError(FileNotFoundError):
    """Assets a run needs are missing: each is named with where it was looked for, why it
    could not be fetched, and the command that fetches them."""

    def __init__(self, missing: Sequence[AssetStatus], command: str, policy: str) -> None:
        self.missing = list(missing)
        self.command = command
        super().__init__(describe_missing(self.missing, command, policy))


def describe_missing(missing: Sequence[AssetStatus], command: str, policy: str) -> str:
    count = f"{len(missing)} asset{'s' if len(missing) != 1 else ''}"
    lines = [f"{count} needed by this run {'is' if len(missing) == 1 else 'are'} missing:"]
    lines += [f"  - {s.asset.label()}: {s.problem or 'missing'}" for s in missing]
    if all(s.offline for s in missing):
        lines.append("This host is offline (no source could be connected to).")
    lines.append(f"Fetch them with:\n  {command}")
    lines.append(
        "For a host without internet: run that with --dest DIR on a connected machine, "
        f"copy DIR over and set {ASSETS_DIR_ENV}=DIR (or assets.dir) here."
    )
    if policy != "never":
        return "\n".join(lines)
    return "\n".join([*lines, "(assets.download is 'never': nothing was downloaded)"])


def prepare_assets(
    plan: AssetPlan,
    on_status: Callable[[AssetStatus], None] | None = None,
) -> dict[str, AssetStatus]:
    """Resolve every asset of `plan` under its settings' policy; raise
    `MissingAssetsError` when one is missing that the run cannot do without: every
    listed asset under 'required'; without `allow_fallback` (the paper profile), every
    one. Where substitutes are allowed (quick, cpu), a missing asset with one is replaced
    by it, and one without one fails only the cells of the model that needs it (its
    build names it), so the other models' cells go on.

    Every source is asked first, downloading nothing: a run that cannot start (one such
    asset cannot be had) fetches none of the others, and its error names every missing
    one. Returns the statuses by asset name; a missing optional asset means its fallback
    is used, and is labelled as such by the build."""
    settings = plan.settings

    def fatal(need: Need) -> bool:
        return settings.download == "required" or not settings.allow_fallback

    unavailable = {n.asset.name: probe_missing(n.asset, settings) for n in plan.needs}
    missing = [unavailable[n.asset.name] for n in plan.needs if fatal(n)]
    missing = [status for status in missing if status is not None]
    if missing:
        for status in missing:
            if on_status is not None:
                on_status(status)
        raise MissingAssetsError(missing, plan.fetch_command, settings.download)
    statuses: dict[str, AssetStatus] = {}
    for need in plan.needs:
        known = unavailable[need.asset.name]
        status = known if known is not None else resolve_asset(need.asset, settings)
        statuses[need.asset.name] = status
        if on_status is not None:
            on_status(status)
    missing = [statuses[n.asset.name] for n in plan.needs if fatal(n)]
    missing = [status for status in missing if not status.present]
    if missing:  # the source answered the probe but the download failed (e.g. its hash)
        raise MissingAssetsError(missing, plan.fetch_command, settings.download)
    return statuses
