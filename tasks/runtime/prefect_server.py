"""The Prefect API a CLI run reports to: the configured server, or a temporary one that
lives exactly as long as the CLI's process.

With no `PREFECT_API_URL`, Prefect starts a temporary server itself
(`prefect.server.api.server.SubprocessASGIServer`), in the flow's process group and
with nothing tying it to the flow's process: Ctrl-C in the terminal (SIGINT to the
whole group) killed it at once while the flow trained on and then retried the API for
minutes, and after `kill -9` of the flow it was left running, orphaned. Prefect's
`PREFECT_SERVER_EPHEMERAL_*` settings choose whether and how long to wait for it, not
how it is started. So a CLI starts the same server (the same uvicorn app and
environment) itself:

- in a session of its own, so a signal to the terminal's process group never reaches
  it: the flow stops first, records the run, then stops the server;
- with `PR_SET_PDEATHSIG`, so the kernel sends it SIGTERM when the CLI's process dies,
  however it dies (Linux; elsewhere only the orderly stop applies).

Example:
    >>> with prefect_api():               # PREFECT_API_URL set: used as it is
    ...     benchmark(dataset="demo")     # the temporary server's URL is the API here
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_WAIT_S = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` that asks the kernel for SIGTERM when `parent` dies (Linux), and
    exits at once if it already died between the fork and the request."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork: the child only calls

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def start_server(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start Prefect's API server (no UI, as Prefect's temporary one) on 127.0.0.1, in
    a session of its own and tied to this process; returns it and its API URL once it
    answers. Call from the main thread: the tie is to the thread that starts it."""
    from prefect.settings import (
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
    )

    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start the temporary Prefect server from the main thread")
    port = port or _free_port()
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    # a child of its own session: the terminal's Ctrl-C does not reach it
    server = subprocess.Popen(  # noqa: PLW1509 - preexec_fn only calls prctl
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],  # fmt: skip
        env=env,
        start_new_session=True,
        preexec_fn=_die_with(os.getpid()),
    )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    while True:
        if server.poll() is not None:
            raise RuntimeError(
                f"the temporary Prefect server exited with code {server.returncode} before "
                f"it answered on {api_url}"
            )
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server, api_url
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(
                f"the temporary Prefect server did not answer on {api_url} within "
                f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s "
                "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
            )
        time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after `STOP_WAIT_S`; reaped either way."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The block reports to `PREFECT_API_URL` when one is set, else to a temporary
    server that this block starts and stops (and the kernel stops if this process dies).
    Yields the API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    server, api_url = start_server()
    log.info("temporary Prefect server on %s (pid %d)", api_url, server.pid)
    try:
        # in the environment too: Dask workers and other children report to it
        with (
            _environment("PREFECT_API_URL", api_url),
            temporary_settings({PREFECT_API_URL: api_url}),
        ):
            try:
                yield api_url
            finally:
                _send_pending()
    finally:
        stop_server(server)


def _send_pending(timeout_s: float = 10.0) -> None:
    """Send the logs and events Prefect still holds while the server still answers (they
    are sent at exit otherwise, to a server gone by then: a minute of retries)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=timeout_s)
        except Exception as err:  # noqa: BLE001 - what is lost is logs, not results
            log.warning("could not send Prefect's pending %s: %s", service.__name__, err)


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
