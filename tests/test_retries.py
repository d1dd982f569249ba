"""Retries only for transient infrastructure faults (tasks/retries.py): the predicate on
its own, and Prefect task runs that really retry, or really do not."""

from __future__ import annotations

import errno

import pytest
from PIL import UnidentifiedImageError
from prefect import flow, task

from tasks.results.types import DatasetError, TrainingAttempt
from tasks.runtime.profiles import ProfileError
from tasks.runtime.retries import is_transient, retry_transient_faults


def training_failed() -> Exception:
    from tasks.training.attempts import TrainingFailed

    attempt = TrainingAttempt(
        attempt=1, seed=0, learning_rate=1e-4, steps=17, end_reason="loss_spike", spike_step=17
    )
    return TrainingFailed("loss spike at step 17 in every attempt", [attempt])


def offline_asset_missing() -> Exception:
    from tasks.models.efficientad.model import OfflineAssetError

    return OfflineAssetError("no teacher weights in data/weights (efficientad.teacher_weights)")


TRANSIENT = [
    ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    TimeoutError("worker heartbeat timed out"),
    OSError(errno.EIO, "Input/output error"),
    OSError(errno.ESTALE, "Stale file handle"),
]
PERMANENT = [
    training_failed,
    offline_asset_missing,
    lambda: UnidentifiedImageError("cannot identify image file 'a.png'"),
    lambda: DatasetError("no category 'x' under /data"),
    lambda: ProfileError("efficientad.max_steps: must be >= 1"),
    lambda: ValueError("unknown model 'padim'"),
    lambda: FileNotFoundError(errno.ENOENT, "No such file", "model.ckpt"),
    lambda: OSError(errno.ENOSPC, "No space left on device"),
    lambda: MemoryError(),
    lambda: RuntimeError("CUDA out of memory"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_faults_are_retried(error):
    assert is_transient(error)


@pytest.mark.parametrize("make", PERMANENT, ids=range(len(PERMANENT)))
def test_faults_of_data_settings_or_training_are_never_retried(make):
    assert not is_transient(make())


def test_a_lost_dask_worker_is_retried():
    scheduler = pytest.importorskip("distributed.scheduler", reason="Dask is optional")
    lost = scheduler.KilledWorker("train-and-evaluate", "tcp://127.0.0.1:1", allowed_failures=3)
    assert is_transient(lost)


def _flaky_flow(error: Exception, fail_times: int) -> list[int]:
    """A real Prefect flow whose task fails `fail_times` times with `error`; returns the
    attempts the task made (the flow's state is returned, not raised)."""
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient_faults)
    def cell() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= fail_times:
            raise error
        return "stored"

    @flow
    def run() -> str:
        return cell()

    run(return_state=True)
    return calls


def test_prefect_retries_a_connection_reset_but_runs_training_failed_once(prefect_api):
    assert _flaky_flow(ConnectionResetError(errno.ECONNRESET, "reset by peer"), 1) == [1, 2]
    assert _flaky_flow(training_failed(), 1) == [1]
