"""Plain loggers' records in the Prefect UI: `shown_in_ui`, shared by every flow.

Long stages log from plain loggers (the asset layer's download progress, EfficientAD's
teacher distillation, the PatchCore coreset). Inside a task run, `shown_in_ui` hands
their INFO records to the handlers Prefect gives `PREFECT_LOGGING_EXTRA_LOGGERS`, so they
reach the task run's log. It is set up where the task runs, so it holds in a worker's or
a Dask worker's process too, whatever their environment.

Example:
    >>> with shown_in_ui("tasks.assets"):
    ...     resolve_asset(asset, settings)  # its progress lines reach the UI
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def shown_in_ui(*names: str) -> Iterator[None]:
    """Forward these loggers' INFO records to the task run's log in the Prefect UI."""
    handlers = logging.getLogger("prefect.extra").handlers
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg, lg.level, [h for h in handlers if h not in lg.handlers]) for lg in loggers]
    for lg, _, added in saved:
        lg.setLevel(logging.INFO)
        for handler in added:
            lg.addHandler(handler)
    try:
        yield
    finally:
        for lg, level, added in saved:
            lg.setLevel(level)
            for handler in added:
                lg.removeHandler(handler)
