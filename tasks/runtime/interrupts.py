"""Stopping a run when told: SIGINT (Ctrl-C) and SIGTERM (`kill`, a Prefect worker
cancelling a flow run) raise `RunInterrupted` in the main thread, wherever it is.

Python's own SIGINT handling is not enough: Lightning catches the KeyboardInterrupt of
a Ctrl-C during `fit`, ignores SIGINT from then on and exits 1, and SIGTERM kills the
process outright. `RunInterrupted` is a BaseException of its own, so `except Exception`
in training code lets it through, and Lightning tears its trainer down and re-raises it.
The flow then records the cell in flight and the run as `cancelled`, stops its workers
and exits 130 or 143, as a shell reports a process ended by SIGINT or SIGTERM.

Example:
    >>> with stop_on_signals():
    ...     train_every_cell()          # Ctrl-C here raises RunInterrupted(SIGINT)
    >>> received()                      # the signal that stopped the run, if any
    <Signals.SIGINT: 2>
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[signal.Signals] = []  # the signal that interrupted the current run
_depth = [0]  # stop_on_signals blocks active


class RunInterrupted(BaseException):
    """The run was told to stop by `signum`; not an Exception, so that nothing on the way
    up mistakes it for a failure of its own."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signal.Signals(signum)

    def __str__(self) -> str:
        return f"interrupted by {self.signum.name}"

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process this signal ended: 130, 143."""
        return 128 + self.signum


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    if _received:  # already stopping: let the cleanup (records, workers) finish
        log.warning(
            "%s received while stopping: still recording the run as cancelled and stopping "
            "its workers (SIGKILL stops at once, and the next run marks this one crashed)",
            signal.Signals(signum).name,
        )
        return
    _received.append(signal.Signals(signum))
    raise RunInterrupted(signum)


def stopped_by(stop: BaseException) -> signal.Signals:
    """The signal behind `stop`: a `RunInterrupted`, or Prefect's `TerminationSignal`
    (its SIGTERM handler, in place while Prefect runs a subflow's engine); noted as this
    run's, as `received` tells."""
    signum = signal.Signals(getattr(stop, "signum", None) or getattr(stop, "signal", 15))
    if not _received:
        _received.append(signum)
    return signum


def received() -> signal.Signals | None:
    """The signal that interrupted a run of this process, if one did."""
    return _received[0] if _received else None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise `RunInterrupted` once; a second
    signal while the run stops is logged and ignored. In a thread other than the main
    one (where Python runs signal handlers) this changes nothing. A block may sit inside
    another (the CLI's around the flow's, the flow's around a subflow's, where Prefect
    puts its own SIGTERM handler back); each one restores the handlers it found."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth[0] == 0:
        _received.clear()  # a new run: an earlier run's signal is not this one's
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _raise_interrupt)
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
