"""Safe names and paths for what the benchmark writes.

A category, model or run name becomes a folder under `output_dir`; `plain_name` refuses
anything that could point elsewhere (`..`, a slash, an absolute path) or hide (a leading
dot), and names anomalib would refuse (control or non-ASCII characters). `artifact_dir`
builds `<output_dir>/<part>/...` from plain names and checks that it resolves inside
`output_dir`, so a symlink planted in the tree cannot redirect it either.

Example:
    >>> artifact_dir("runs", "3f2c...", "patchcore", "grid")
    PosixPath('runs/3f2c.../patchcore/grid')
    >>> plain_name("../x", "category")
    Traceback (most recent call last):
    UnsafePath: category '../x' is not a plain folder name: ...
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: flows/, tasks/, templates/
_PLAIN = re.compile(r"[\x20-\x7E]{1,255}")
_RESERVED = '<>:"|?*'  # not allowed in Windows file names, and glob patterns


class UnsafePath(ValueError):
    """A name or path that would leave its folder; the message names it and the rule."""


def plain_name(name: str, what: str = "name") -> str:
    """`name` itself when it is a plain folder name, else `UnsafePath` saying why."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is empty"
    elif "/" in name or "\\" in name:
        problem = "it holds a slash"
    elif any(c in name for c in _RESERVED):
        problem = f"it holds one of {_RESERVED}"
    elif name.startswith("."):
        problem = "it starts with '.' ('..' climbs out, '.x' is hidden)"
    elif not _PLAIN.fullmatch(name):
        problem = "it holds control or non-ASCII characters, or over 255 of them"
    elif name != name.strip():
        problem = "it starts or ends with a space"
    if problem:
        raise UnsafePath(f"{what} {name!r} is not a plain folder name: {problem}")
    return name


def inside(base: str | Path, path: str | Path) -> Path:
    """`path`, after checking it resolves (links followed) inside `base`."""
    root, target = Path(base).resolve(), Path(path).resolve()
    if not target.is_relative_to(root):
        raise UnsafePath(f"{path} resolves to {target}, outside {root}")
    return Path(path)


def artifact_dir(output_dir: str | Path, *names: str) -> Path:
    """`output_dir/names[0]/names[1]/...`, each a plain name, resolving inside `output_dir`."""
    for name in names:
        plain_name(name, "artifact folder name")
    return inside(output_dir, Path(output_dir).joinpath(*names))
