"""The local Prefect stack: server (SQLite, 127.0.0.1), process work pool, deployments
from prefect.yaml, and a worker, started by one command and stopped by PID.

    python -m scripts.stack up         # start what is not running yet, deploy
    python -m scripts.stack run-demo   # run the demo deployment, one line per finished cell
    python -m scripts.stack down       # stop exactly the processes `up` started

State (PID files, logs, the API auth string, PREFECT_HOME with the SQLite database) lives
in `.stack/`. The stack only touches its own processes:
- a PID file records the process's command line and start time; `down` signals a PID
  only when both still match, so a PID reused after a reboot is left alone;
- `up` starts the server only on a free port and checks that what answers there is its
  own child: it never deploys to, or crashes the runs of, a server it did not start;
- the server requires an auth string (`.stack/api-auth`, mode 0600) that the worker,
  the CLI calls and the flow runs get through PREFECT_API_AUTH_STRING; the UI asks for it
  at login, and `run-demo` and `status` say where it is;
- a failed `up` stops what it started; `down` can run any number of times.
The end-to-end test drives the same `Stack` class on a free port in a temp folder.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORK_POOL = "benchmark-pool"
GPU_POOL = "gpu-pool"  # mvtec-nightly's pool: a GPU host runs its worker, this stack none
DEFAULT_PORT = 4200
HOST = "127.0.0.1"
STOP_WAIT_S = 10.0


class StackError(RuntimeError):
    """The stack cannot start as asked; the message names the port, process or file."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on `host:port` (a listener on 0.0.0.0 counts too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; the command name may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has finished


@dataclass(frozen=True)
class ProcessRecord:
    """What a PID file holds: enough to tell our process from a later one with its PID."""

    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: clock ticks after boot
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> ProcessRecord | None:
        """The record of the running process `pid`, or None when there is none."""
        fields = _stat_fields(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if fields is None or fields[0] == "Z":
            return None
        return cls(pid, int(fields[19]), tuple(c.decode(errors="replace") for c in cmdline if c))

    def mismatch(self) -> str | None:
        """Why the process now running as `pid` is not this one, or None when it is."""
        now = ProcessRecord.of(self.pid)
        if now is None:
            return "no such process"
        if now.start_ticks != self.start_ticks:
            return "a different process started later with the same PID"
        if now.cmdline != self.cmdline:
            return f"it runs {' '.join(now.cmdline)[:120]!r}"
        return None


def _record_after_exec(pid: int, args: list[str], wait_s: float = 5.0) -> ProcessRecord:
    """The record of a just-started child, once /proc shows its new command line (for a
    moment after the exec it can still show the parent's)."""
    deadline = time.monotonic() + wait_s
    while True:
        record = ProcessRecord.of(pid)
        if record is not None and record.cmdline[-len(args) + 1 :] == tuple(args[1:]):
            return record
        if record is None or time.monotonic() > deadline:
            return ProcessRecord(pid, record.start_ticks if record else -1, tuple(args))
        time.sleep(0.01)


def _running() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields from the state on) of every running (not zombie) process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z":
                yield int(entry.name), fields


def _group_members(pgid: int) -> list[int]:
    """Running (not zombie) processes of the process group `pgid`."""
    return [pid for pid, fields in _running() if fields[2] == str(pgid)]


def descendants(pid: int) -> list[int]:
    """Running processes started by `pid` at any depth, those in sessions of their own too."""
    children: dict[int, list[int]] = {}
    for child, fields in _running():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def listener_in_group(port: int, pgid: int) -> bool:
    """True when a process of group `pgid` holds the socket listening on `port`."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    for pid in _group_members(pgid):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return True
            except OSError:
                continue
    return False


def _signal(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (its children too), or `pid` alone when it
    leads none: never the group of some other process."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _detached_descendants(leader: int) -> list[ProcessRecord]:
    """Processes started by `leader` (at any depth) outside its process group, recorded."""
    found = []
    for pid in descendants(leader):
        fields, record = _stat_fields(pid), ProcessRecord.of(pid)
        if fields is not None and record is not None and fields[2] != str(leader):
            found.append(record)
    return found


def _signal_ours(record: ProcessRecord, sig: int) -> None:
    """Signal the process `record` names, only while that PID is still that process."""
    if record.mismatch() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record.pid, sig)


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    state_dir: Path = PROJECT_DIR / ".stack"
    port: int = DEFAULT_PORT
    project_dir: Path = PROJECT_DIR

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def login_hint(self) -> str:
        """What the UI's login page wants: the server's API auth string, from its file
        (named, not printed: terminal output ends up in logs)."""
        path = self.state_dir / "api-auth"
        with contextlib.suppress(ValueError):
            path = path.relative_to(Path.cwd())
        return f"log in with the API auth string in {path}, all of it (user:password): cat {path}"

    def auth_string(self) -> str:
        """The server's API auth string ("user:password"), made once, readable by the owner only."""
        path = self.state_dir / "api-auth"
        if not path.exists():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"bench:{secrets.token_urlsafe(24)}")
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        auth = self.auth_string()
        env.update(
            PREFECT_HOME=str(self.state_dir / "prefect-home"),
            PREFECT_API_URL=self.api_url,
            PREFECT_API_AUTH_STRING=auth,
            PREFECT_SERVER_API_AUTH_STRING=auth,
            PREFECT_SERVER_API_HOST=HOST,
            PREFECT_SERVER_API_PORT=str(self.port),
            # no anonymous usage reports, and no error line per run when offline
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_SHOW_PROMO="false",
            DO_NOT_TRACK="1",
            BENCH_PROJECT_DIR=str(self.project_dir),
            PYTHONUNBUFFERED="1",
        )
        return env

    # -- PID files

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _record(self, name: str) -> tuple[ProcessRecord | None, str | None]:
        """(the process the PID file names, why it is not ours) - both None: no PID file."""
        path = self._pidfile(name)
        try:
            text = path.read_text().strip()
            if text.isdigit():  # an older stack's PID file: nothing to check it against
                return ProcessRecord(int(text), -1, ()), "the PID file records no start time"
            data = json.loads(text)
            record = ProcessRecord(
                int(data["pid"]), int(data["start_ticks"]), tuple(data["cmdline"])
            )
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, TypeError, KeyError):
            return None, f"{path} is not a PID file this stack wrote"
        return record, record.mismatch()

    def pid(self, name: str) -> int | None:
        """The PID of this stack's `name` process while it runs, else None."""
        record, problem = self._record(name)
        return record.pid if record is not None and problem is None else None

    def _spawn(self, name: str, args: list[str]) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            args,
            cwd=self.project_dir,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: `down` stops it and its children
        )
        log.close()
        record = _record_after_exec(proc.pid, args)
        self._pidfile(name).write_text(json.dumps(asdict(record)))
        return proc.pid

    def _stop(self, name: str) -> None:
        """Stop `name` if its PID file names our process; never signal anything else."""
        record, problem = self._record(name)
        if record is None and problem is None:
            return
        if record is not None and not _alive(record.pid):
            print(f"{name} (pid {record.pid}) had already stopped")
            self._pidfile(name).unlink(missing_ok=True)
            return
        if problem is not None:
            pid = f"pid {record.pid}" if record else "its PID"
            print(f"{name}: {pid} is not the process this stack started ({problem}): left alone")
            self._pidfile(name).unlink(missing_ok=True)
            return
        # the worker starts each flow run in a session of its own, out of reach of a
        # signal to the worker's group: they are stopped by PID, as recorded now
        detached = _detached_descendants(record.pid)
        _signal(record.pid, signal.SIGTERM)
        for child in detached:
            _signal_ours(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        ours = [record, *detached]

        def running() -> bool:  # ours, or anything left in the group our process led
            return any(r.mismatch() is None for r in ours) or bool(_group_members(record.pid))

        while running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(record.pid):
            _signal(record.pid, signal.SIGKILL)
        elif _group_members(record.pid):
            # a child forked as the signal went out: the group still bears our PID, and
            # no new process can take a PID that names a live group, so it is ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGKILL)
        for child in detached:
            _signal_ours(child, signal.SIGKILL)
        self._pidfile(name).unlink(missing_ok=True)
        also = f", and what it ran in sessions of their own: pids {[c.pid for c in detached]}"
        also = also if detached else ""
        print(f"stopped {name} (pid {record.pid}){also}")

    # -- up

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def prefect(self, *args: str, check: bool = True, timeout: float = 300):
        """Run the prefect CLI against this stack's server."""
        cmd = [str(Path(sys.executable).with_name("prefect")), *args]
        return subprocess.run(
            cmd,
            cwd=self.project_dir,
            env=self.env(),
            check=check,
            timeout=timeout,
            capture_output=True,
            text=True,
        )

    def _server_answers(self, pid: int) -> bool:
        return self.healthy() and listener_in_group(self.port, pid)

    def _start_server(self, timeout: float, started: list[str]) -> None:
        """Our server on `port`, started if need be (then named in `started`)."""
        pid = self.pid("server")
        if pid is not None and self._server_answers(pid):
            print(f"server already up at {self.ui_url} (pid {pid})")
            return
        self._stop("server")  # ours but not answering, or a stale PID file
        if not port_is_free(self.port):
            raise StackError(
                f"port {self.port} on {HOST} is in use by a process this stack did not start; "
                "`up` uses only a server it started. Stop that process, or pick another "
                "port: python -m scripts.stack up --port N"
            )
        prefect_bin = str(Path(sys.executable).with_name("prefect"))
        pid = self._spawn(
            "server", [prefect_bin, "server", "start", "--host", HOST, "--port", str(self.port)]
        )
        started.append("server")
        deadline = time.monotonic() + timeout
        while not self._server_answers(pid):
            if time.monotonic() > deadline or not self.pid("server"):
                log = (self.state_dir / "server.log").read_text(errors="replace")[-3000:]
                raise StackError(
                    f"the Prefect server (pid {pid}) did not come up on port {self.port}:\n{log}"
                )
            time.sleep(0.5)
        print(f"server up at {self.ui_url} (pid {pid})")

    def _start_worker(self, started: list[str]) -> None:
        pid = self.pid("worker")
        if pid is not None:
            print(f"worker already running (pid {pid})")
            return
        self._stop("worker")  # a stale PID file
        for flow_run_id in self.crash_orphaned_flow_runs():
            print(f"flow run {flow_run_id} lost its worker: marked Crashed")
        prefect_bin = str(Path(sys.executable).with_name("prefect"))
        pid = self._spawn(
            "worker", [prefect_bin, "worker", "start", "--pool", WORK_POOL, "--type", "process"]
        )
        started.append("worker")
        print(f"worker started (pid {pid})")

    def _ensure_pools(self) -> None:
        """The two process work pools, created through the API (one CLI call costs seconds)."""
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectNotFound
        from prefect.workers.process import ProcessWorker

        # WORK_POOL runs one benchmark at a time: two trainings would only fight over the
        # same cores, and it lets a new run know that any other `running` run is dead
        limits = {WORK_POOL: 1, GPU_POOL: None}
        with self.client() as client:
            for name, limit in limits.items():
                try:
                    client.read_work_pool(name)
                except ObjectNotFound:
                    pool = WorkPoolCreate(
                        name=name,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                        concurrency_limit=limit,
                    )
                    client.create_work_pool(pool)

    def _ensure_pool_and_deployments(self, deploy: bool) -> None:
        self._ensure_pools()
        if deploy:
            result = self.prefect("--no-prompt", "deploy", "--all", check=False)
            if result.returncode != 0:
                raise StackError(f"prefect deploy failed:\n{result.stdout}\n{result.stderr}")
            print("deployments created from prefect.yaml")

    def up(self, deploy: bool = True, timeout: float = 120) -> None:
        """Start what is not running; on any failure, stop what this call started."""
        started: list[str] = []
        try:
            self._start_server(timeout, started)
            self._ensure_pool_and_deployments(deploy)
            self._start_worker(started)
        except BaseException:
            for name in reversed(started):
                self._stop(name)
            raise
        (self.state_dir / "stack.json").write_text(json.dumps({"port": self.port}))

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A synchronous Prefect client for this stack's server (its URL and auth string)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        settings = {PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string()}
        with temporary_settings(settings), get_client(sync_client=True) as client:
            yield client

    def crash_orphaned_flow_runs(self) -> list[str]:
        """With no worker alive, a flow run of this pool still `Running` died with its
        worker (killed, machine restarted). Mark it Crashed, so it stops holding the pool's
        only slot and the next benchmark run can close its partial results."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            WorkPoolFilter,
            WorkPoolFilterName,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.states import Crashed

        active = FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CANCELLING])
            )
        )
        pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[WORK_POOL]))
        with self.client() as client:
            orphans = client.read_flow_runs(flow_run_filter=active, work_pool_filter=pool)
            for run in orphans:
                client.set_flow_run_state(
                    run.id, Crashed(message="its worker stopped before it finished"), force=True
                )
        return [str(run.id) for run in orphans]

    def down(self) -> None:
        """Stop the worker, then the server: only processes this stack started. Safe to
        run any number of times."""
        for name in ("worker", "server"):
            try:
                self._stop(name)
            except OSError as err:
                print(f"{name}: could not stop it: {err}")

    def run_and_follow(
        self,
        name: str,
        params: dict | None = None,
        timeout: float = 3600,
        echo: Callable[[str], None] = print,
        poll: float = 5.0,  # each poll costs the server (on the same cores) a few queries
    ) -> str:
        """Start deployment `name` and, while it runs, `echo` one line per finished cell
        and every warning, as the flow logs them; return the final state's name.

        The lines are the flow's own log lines (its cell summaries: AUROC, fit time,
        worker) and any WARNING or worse from its tasks, read back from the server."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        deadline = time.monotonic() + timeout
        with self.client() as client:
            deployment = client.read_deployment_by_name(name)
            run = client.create_flow_run_from_deployment(deployment.id, parameters=params or {})
            echo(f"flow run {run.name}: {self.ui_url}/runs/flow-run/{run.id}")
            seen: set = set()
            since = None
            polls_after_end = 0
            while True:
                run = client.read_flow_run(run.id)
                ended = run.state is not None and run.state.is_final()
                children = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
                    )
                )
                ids = [run.id, *(child.id for child in children)]
                # Logs reach the server in batches, not always in order: look a minute
                # back and skip what was shown.
                after = since - datetime.timedelta(seconds=60) if since else None
                for log in _read_all_logs(client, ids, after):
                    if log.id in seen or not _worth_echoing(log):
                        continue
                    seen.add(log.id)
                    since = max(since, log.timestamp) if since else log.timestamp
                    echo(f"{log.timestamp.astimezone():%H:%M:%S} {log.message}")
                # one more read once it ended: its last lines may still be on their way
                if ended and (polls_after_end := polls_after_end + 1) > 1:
                    return run.state.name
                if time.monotonic() > deadline:
                    return (
                        f"still {run.state.name if run.state else 'unknown'} after {timeout:.0f} s"
                    )
                time.sleep(min(poll, 1.0) if ended else poll)

    def run_deployment(self, name: str, params: dict | None = None, timeout: float = 3600):
        args = ["deployment", "run", name, "--watch"]
        for key, value in (params or {}).items():
            args += ["--param", f"{key}={json.dumps(value)}"]
        return self.prefect(*args, check=False, timeout=timeout)


# The engine's own chatter about a flow run, left out of the terminal (it is in the UI).
_ENGINE_LINES = (
    "Beginning ",
    "View at ",
    "Running 1 deployment",
    "Executing deployment step",
    "Deployment step ",
    "All deployment steps",
    "Downloading flow code",
    "Finished in state",
)


def _read_all_logs(client, flow_run_ids: list, after) -> list:
    """Every log of these flow runs (and their tasks) from `after` on, oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    log_filter = LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=flow_run_ids),
        timestamp=LogFilterTimestamp(after_=after) if after else None,
    )
    logs: list = []
    while True:
        page = client.read_logs(log_filter, limit=200, offset=len(logs), sort=LogSort.TIMESTAMP_ASC)
        logs.extend(page)
        if len(page) < 200:
            return logs


def _worth_echoing(log) -> bool:
    """A flow-level line that is not engine chatter, or any warning or worse."""
    if log.level >= logging.WARNING:
        return True
    return log.task_run_id is None and not log.message.startswith(_ENGINE_LINES)


def _load_stack(state_dir: Path) -> Stack:
    state = state_dir / "stack.json"
    port = json.loads(state.read_text())["port"] if state.exists() else DEFAULT_PORT
    return Stack(state_dir=state_dir, port=port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "run-demo", "status"])
    parser.add_argument("--port", type=int, default=None, help="server port (default 4200)")
    parser.add_argument(
        "--state-dir", type=Path, default=PROJECT_DIR / ".stack", help="default: .stack/"
    )
    args = parser.parse_args(argv)
    stack = _load_stack(args.state_dir)
    if args.port:
        stack.port = args.port
    if args.command == "up":
        try:
            stack.up()
        except StackError as err:
            print(f"stack up failed: {err}", file=sys.stderr)
            return 1
    elif args.command == "down":
        stack.down()
    elif args.command == "status":
        for name in ("server", "worker"):
            pid = stack.pid(name)
            print(f"{name}: {f'running, pid {pid}' if pid else 'stopped'}")
        print(f"UI: {stack.ui_url} ({'healthy' if stack.healthy() else 'not answering'})")
        print(f"UI login: {stack.login_hint}")
    else:
        print(
            f"running deployment anomaly-benchmark/demo; watch it in the Prefect UI at "
            f"{stack.ui_url}/runs ({stack.login_hint})",
            flush=True,
        )
        import httpx

        try:
            state = stack.run_and_follow(
                "anomaly-benchmark/demo", echo=lambda line: print(line, flush=True)
            )
        except httpx.TransportError as err:
            print(
                f"no answer from the Prefect server at {stack.api_url} ({err}): is the stack"
                " up? (`make demo` starts it; `make down` stops the server, the worker and"
                " a flow run in flight)",
                file=sys.stderr,
            )
            return 1
        print(f"flow run: {state}")
        report = PROJECT_DIR / "reports" / "latest.html"
        print(f"report: {report if report.exists() else '(not written)'}")
        print(f"Prefect UI: {stack.ui_url}/runs ({stack.login_hint})")
        return 0 if state == "Completed" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
