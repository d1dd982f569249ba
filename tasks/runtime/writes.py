"""Writing what a run writes: a failure names what and where, with the OS error, and
leaves nothing half-written.

A read-only folder or a full disk must read as such ("cannot write report
reports/latest.html: No space left on device"), not as a schema problem or a bare
traceback, and must not leave a 0-byte temporary file behind. Every folder the run
creates and every file it writes whole goes through here:

    >>> ensure_dir(Path("runs/r1"), "output_dir")
    PosixPath('runs/r1')
    >>> write_atomic(Path("reports/r1/report.html"), html, "report")  # on a full disk
    Traceback (most recent call last):
    WriteFailed: cannot write report reports/r1/report.html: [Errno 28] No space left on ...
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# errnos that say the place cannot take the write (as opposed to a wrong file)
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
)


class WriteFailed(OSError):
    """A folder or file of the run could not be written; the message names it and the OS
    error. An OSError, with the errno of the cause."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def os_error_text(err: OSError) -> str:
    """'[Errno 28] No space left on device', without the file name (said separately)."""
    if err.errno is not None and err.strerror:
        return f"[Errno {err.errno}] {err.strerror}"
    return str(err)


def errno_in(message: str) -> int | None:
    """The errno whose text appears in `message` (e.g. a DuckDB error's), if any."""
    for code in sorted(WRITE_ERRNOS):
        if os.strerror(code) in message:
            return code
    return None


@contextlib.contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Turn an OSError of the block into `WriteFailed` naming `what` and `path`."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as err:
        raise WriteFailed(err.errno, f"cannot write {what} {path}: {os_error_text(err)}") from err


def ensure_dir(path: Path, what: str) -> Path:
    """Create folder `path` (and its parents) for `what`, or `WriteFailed` naming both."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteFailed(
            err.errno, f"cannot create the {what} folder {path}: {os_error_text(err)}"
        ) from err
    return path


# Below this much free space a filesystem counts as full: a write failed for want of room.
FULL_BELOW_BYTES = 1 << 20


def storage_problem(path: Path) -> tuple[int, str] | None:
    """(errno, '[Errno 28] No space left on device') when the filesystem holding `path`
    is read-only, full or not writable here, else None. For failures that do not say so
    themselves (torch and OpenVINO raise RuntimeErrors that name neither)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        code = errno.EROFS
    elif stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES:
        code = errno.ENOSPC
    elif not os.access(folder, os.W_OK):
        code = errno.EACCES
    else:
        return None
    return code, f"[Errno {code}] {os.strerror(code)}"


def as_write_failure(err: BaseException, path: Path, what: str) -> BaseException:
    """`err` as `WriteFailed` naming `what`, `path` and the OS error when writing there
    is what failed (an OSError of a write errno, or any error while the filesystem is
    full or read-only); else `err` itself."""
    if isinstance(err, WriteFailed):
        return err
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return WriteFailed(err.errno, f"cannot write {what} {path}: {os_error_text(err)}")
    problem = storage_problem(path)
    if problem is None:
        return err
    code, text = problem
    return WriteFailed(code, f"cannot write {what} {path}: {text} ({type(err).__name__}: {err})")


def write_atomic(path: Path, data: str | bytes, what: str, mode: int = 0o644) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: a
    reader sees the old file or the new one, never half of one, and a failed write
    removes its temporary file. The file gets `mode` (mkstemp would give 0600)."""
    path = Path(path)
    ensure_dir(path.parent, what)
    with writing(path, what):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
                os.fchmod(handle.fileno(), mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path
