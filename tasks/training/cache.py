"""When a trained result may be reused: the cache key of one (model, category) cell.

The key covers everything that shapes a result: the dataset's hash, the profile's
settings, the source of every module in the project's packages (`tasks`, `checks`,
`flows`: the whole package, not a hand-picked list), the versions of the libraries
that train and score (anomalib, torch, torchvision, lightning, timm, scikit-learn),
the sha256 of every weights file the model may load (the weights folder, and the files
its registry entry names: e.g. a configured teacher, the EfficientNet-Lite0 package
file), and each asset its entry declares as found on this host (its verified sha256, or
missing: a substitute then stands in). Change one byte of any of them, or fetch an asset
that was missing, and the cell trains again.

A result served from the cache belongs to the run that trained it; `mark_cached` makes
the copy say so, so its timings are never shown as fresh measurements.

Example:
    >>> key = cache_key("patchcore", "demo_grid", "ab12...", load_profile("quick"))
    >>> key.startswith("train-")
    True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.models import registry
from tasks.results.types import ModelResult
from tasks.runtime.paths import REPO_ROOT
from tasks.runtime.profiles import Profile, weights_dir

PROJECT_PACKAGES = ("tasks", "checks", "flows")
LIBRARIES = ("anomalib", "torch", "torchvision", "lightning", "timm", "scikit-learn")


def code_fingerprint(root: Path | None = None, packages: tuple[str, ...] = PROJECT_PACKAGES) -> str:
    """sha256 over every Python file of the project's packages (relative path + bytes)."""
    root = root or REPO_ROOT
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the memo key: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _entries(model_name: str | None) -> list:
    return [registry.get(model_name)] if model_name else list(registry.MODELS.values())


def weights_files(profile: Profile, model_name: str | None = None) -> list[Path]:
    """Every weights file the model (None: any registered model) of this profile may
    load, as found on disk now: the weights folder (its hidden lock and temporary files
    aside), and what its registry entry names."""
    folder = weights_dir(profile)
    files = [
        p
        for p in (folder.rglob("*") if folder.is_dir() else [])
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    for entry in _entries(model_name):
        files += entry.weight_files(entry.settings_for(profile), folder)
    return sorted({p.resolve() for p in files if p.is_file()})


def weights_fingerprint(profile: Profile, model_name: str | None = None) -> dict[str, str]:
    return {str(p): file_sha256(p) for p in weights_files(profile, model_name)}


def assets_fingerprint(profile: Profile, model_name: str | None = None) -> dict[str, str]:
    """Each asset the model's entry declares, as it is on this host now: the sha256 its
    copy was verified against (a hub file's own hash when not recorded), 'present' for a
    folder copied without one, or 'missing' (its substitute then stands in)."""
    found = {}
    for entry in _entries(model_name):
        for need in entry.assets(entry.settings_for(profile), profile.assets):
            asset = need.asset
            path = asset.local_path()
            if path is None:
                found[asset.name] = "missing"
            else:
                found[asset.name] = asset.local_sha256() or (
                    file_sha256(path) if path.is_file() else "present"
                )
    return found


def cache_key(model_name: str, category: str, dataset_hash: str, profile: Profile) -> str:
    """Same data, settings, code, libraries and weights: the trained result is reused."""
    key = {
        "model": model_name,
        "category": category,
        "dataset_hash": dataset_hash,
        "profile": profile.model_dump(mode="json"),
        "code": code_fingerprint(),
        "libraries": library_versions(),
        "weights": weights_fingerprint(profile, model_name),
        "assets": assets_fingerprint(profile, model_name),
    }
    return "train-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def training_cache_key(context: Any, parameters: dict) -> str:
    """Prefect `cache_key_fn` of the train-and-evaluate task."""
    del context
    return cache_key(
        parameters["model_name"],
        parameters["category"],
        parameters["dataset_hash"],
        parameters["profile"],
    )


def mark_cached(result: ModelResult, run_id: str) -> ModelResult:
    """The result as served to `run_id`: unchanged when this run trained it, else a copy
    that names the run it came from and marks its export and timing as cached."""
    if result.trained_in is None or result.trained_in == run_id:
        return result
    note = (
        f"served from the cache of run {result.trained_in}: train time and latency are "
        "that run's measurements, not this run's"
    )
    return dataclasses.replace(
        result,
        cached_from=result.trained_in,
        stages=[dataclasses.replace(s, status="cached") for s in result.stages],
        notes=[*result.notes, note],
    )
