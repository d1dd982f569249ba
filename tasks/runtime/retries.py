"""Which failures are worth another try: an allow-list of transient infrastructure faults.

A retry runs the same code on the same data with the same seeds, so it only helps when
the fault was outside them: a dropped connection, a lost worker, an I/O hiccup. Bad
data, bad settings, missing offline assets and a training that diverged fail the same
way again, so they are never retried:

    @task(retries=1, retry_condition_fn=retry_transient_faults)
    def train_and_evaluate_task(...): ...

Out of memory is not retried either: a retry would use the same batch size.
"""

from __future__ import annotations

import errno

from PIL import UnidentifiedImageError

# OSErrors that say the device or the network stumbled, not that a file is wrong.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.EPIPE,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ESTALE,
    }
)


def _worker_loss_errors() -> tuple[type[BaseException], ...]:
    """Dask's lost-worker and closed-connection errors, when Dask is installed."""
    try:
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker
    except ImportError:
        return ()
    return (KilledWorker, CommClosedError)


def is_transient(error: BaseException) -> bool:
    """True for faults of the machinery that another try may not meet again. Everything
    else, e.g. TrainingFailed, DatasetError, ProfileError, ValueError, a missing offline
    asset (FileNotFoundError) or an unreadable image, is not."""
    if isinstance(error, UnidentifiedImageError):  # an OSError, but about the file
        return False
    if isinstance(error, (ConnectionError, TimeoutError, *_worker_loss_errors())):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


def retry_transient_faults(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only for a transient fault."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - classified, not swallowed: the state keeps it
        return is_transient(error)
    return False
