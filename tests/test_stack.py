"""The stack script touches only its own processes: stale PID files, a foreign server on
the port, a failed `up`, a repeated `down`. Real processes throughout; one slow test
starts a real Prefect server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts.stack import (
    ProcessRecord,
    Stack,
    StackError,
    _group_members,
    descendants,
    free_port,
    main,
    port_is_free,
)


@pytest.fixture
def unrelated_sleep():
    """A process in its own session that the stack never started; killed by PID at the end."""
    proc = subprocess.Popen(["setsid", "sleep", "300"])
    deadline = time.monotonic() + 10
    while ProcessRecord.of(proc.pid) is None or "sleep" not in " ".join(
        ProcessRecord.of(proc.pid).cmdline
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def _alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


@pytest.mark.parametrize("pid_file", ["plain_pid", "same_command_other_start"])
def test_down_leaves_an_unrelated_process_alone(tmp_path, unrelated_sleep, pid_file, capsys):
    state = tmp_path / "stack"
    state.mkdir()
    pid = unrelated_sleep.pid
    if pid_file == "plain_pid":  # an old-style PID file, or someone else's
        (state / "server.pid").write_text(str(pid))
    else:  # what a reboot does: the same PID, later start time
        record = ProcessRecord.of(pid)
        stale = {"pid": pid, "start_ticks": record.start_ticks - 1, "cmdline": record.cmdline}
        (state / "server.pid").write_text(json.dumps(stale))
    (state / "worker.pid").write_text(str(pid))

    assert main(["down", "--state-dir", str(state)]) == 0
    time.sleep(0.3)
    assert _alive(unrelated_sleep), "down signalled a process it did not start"
    out = capsys.readouterr().out
    assert f"pid {pid} is not the process this stack started" in out and "left alone" in out
    assert not (state / "server.pid").exists() and not (state / "worker.pid").exists()
    assert main(["down", "--state-dir", str(state)]) == 0  # idempotent


def test_down_stops_our_non_leader_process_without_touching_its_group(tmp_path):
    """A PID file naming our own process that leads no group: that process alone stops
    (the test runner, in the same group, survives), and `down` does not raise."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        assert os.getpgid(child.pid) != child.pid
        deadline = time.monotonic() + 10
        while "time.sleep" not in " ".join(ProcessRecord.of(child.pid).cmdline):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stack = Stack(state_dir=tmp_path, port=free_port())
        record = ProcessRecord.of(child.pid)
        (tmp_path / "worker.pid").write_text(
            json.dumps({"pid": record.pid, "start_ticks": record.start_ticks,
                        "cmdline": record.cmdline})
        )  # fmt: skip
        assert stack.pid("worker") == child.pid
        stack.down()
        assert child.wait(timeout=15) == -signal.SIGTERM
        stack.down()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_down_stops_what_our_worker_runs_in_sessions_of_their_own(tmp_path):
    """A worker starts each flow run in a session of its own (as Prefect does): `down`
    stops those by PID, not only the worker's group."""
    code = (
        "import subprocess, time; subprocess.Popen(['sleep', '300'], start_new_session=True);"
        " time.sleep(300)"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    flow_run = None
    try:
        deadline = time.monotonic() + 10
        while not (runs := descendants(worker.pid)) or "sleep" not in " ".join(
            ProcessRecord.of(runs[0]).cmdline
        ):
            assert time.monotonic() < deadline, "the flow run stand-in did not start"
            time.sleep(0.05)
        flow_run = ProcessRecord.of(runs[0])
        assert os.getpgid(flow_run.pid) != worker.pid
        record = ProcessRecord.of(worker.pid)
        (tmp_path / "worker.pid").write_text(json.dumps({
            "pid": record.pid, "start_ticks": record.start_ticks, "cmdline": record.cmdline
        }))  # fmt: skip
        Stack(state_dir=tmp_path, port=free_port()).down()
        assert worker.wait(timeout=15) == -signal.SIGTERM
        deadline = time.monotonic() + 15
        while flow_run.mismatch() is None:
            assert time.monotonic() < deadline, "the flow run outlived make down"
            time.sleep(0.1)
    finally:
        if flow_run is not None and flow_run.mismatch() is None:
            os.kill(flow_run.pid, signal.SIGKILL)
        worker.kill()
        worker.wait(timeout=10)


def test_run_demo_without_a_server_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    # what `make demo` prints when `make down` stopped the stack under it
    monkeypatch.setenv("PREFECT_CLIENT_MAX_RETRIES", "0")
    assert main(["run-demo", "--state-dir", str(tmp_path), "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert "no answer from the Prefect server" in err and "Traceback" not in err


def test_run_demo_prints_the_ui_address_and_how_to_log_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_CLIENT_MAX_RETRIES", "0")
    port = free_port()
    main(["run-demo", "--state-dir", str(tmp_path), "--port", str(port)])
    first = capsys.readouterr().out.splitlines()[0]
    auth = tmp_path / "api-auth"
    assert f"http://127.0.0.1:{port}/runs" in first
    assert f"log in with the API auth string in {auth}" in first and f"cat {auth}" in first
    assert auth.read_text() not in first  # named, never printed


class _LooksLikePrefect(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


def test_up_refuses_a_foreign_server_on_the_port_naming_it(tmp_path, unrelated_sleep):
    """A server this stack did not start answers /api/health like Prefect, and a stale
    PID file names some other process: `up` refuses, starts nothing, signals nothing."""
    port = free_port()
    foreign = ThreadingHTTPServer(("127.0.0.1", port), _LooksLikePrefect)
    thread = threading.Thread(target=foreign.serve_forever, daemon=True)
    thread.start()
    try:
        state = tmp_path / "stack"
        state.mkdir()
        (state / "server.pid").write_text(str(unrelated_sleep.pid))
        stack = Stack(state_dir=state, port=port)
        assert stack.healthy()  # what the old check trusted
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is in use"):
            stack.up()
        assert _alive(unrelated_sleep)
        assert not (state / "server.pid").exists() and not (state / "worker.pid").exists()
        assert not (state / "server.log").exists()  # no server was started
        code = main(["up", "--state-dir", str(state), "--port", str(port)])
        assert code == 1
    finally:
        foreign.shutdown()
        foreign.server_close()


def test_failed_up_stops_the_server_it_started(tmp_path, capsys):
    stack = Stack(state_dir=tmp_path / "stack", port=free_port())
    with pytest.raises(StackError, match=f"did not come up on port {stack.port}"):
        stack.up(timeout=0.5)  # far too short for a real server start
    assert not (stack.state_dir / "server.pid").exists()
    out = capsys.readouterr().out
    assert re.findall(r"stopped server \(pid (\d+)\)", out), out
    (pid,) = re.findall(r"stopped server \(pid (\d+)\)", out)
    assert _group_members(int(pid)) == []  # the server and every child it had are gone
    assert port_is_free(stack.port)


@pytest.mark.slow
def test_real_server_needs_the_auth_string_and_up_down_are_repeatable(tmp_path):
    stack = Stack(state_dir=tmp_path / "stack", port=free_port())
    try:
        stack.up(deploy=False, timeout=300)
        server = stack.pid("server")
        assert server is not None and stack.pid("worker") is not None
        assert oct((stack.state_dir / "api-auth").stat().st_mode & 0o777) == "0o600"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{stack.api_url}/flows/filter", data=b"{}", timeout=10)
        assert refused.value.code == 401
        inspected = stack.prefect("work-pool", "inspect", "benchmark-pool")  # with the auth
        assert "process" in inspected.stdout
        stack.up(deploy=False)  # everything already up: reused, nothing new started
        assert stack.pid("server") == server
        log = (stack.state_dir / "server.log").read_text()
        assert "telemetry" not in log.lower(), log[-2000:]
    finally:
        stack.down()
    assert stack.pid("server") is None and port_is_free(stack.port)
    stack.down()
