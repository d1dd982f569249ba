"""The local Prefect stack: server (SQLite, 127.0.0.1), process work pool, deployments
from prefect.yaml, and a worker, started by one command and stopped by PID.

    python -m scripts.stack up         # start what is not running yet, deploy
    python -m scripts.stack run-demo   # prefect deployment run 'anomaly-benchmark/demo' --watch
    python -m scripts.stack down       # stop exactly the processes `up` started

State (PID files, logs, PREFECT_HOME with the SQLite database) lives in `.stack/`.
The end-to-end test drives the same `Stack` class on a free port in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORK_POOL = "benchmark-pool"
GPU_POOL = "gpu-pool"  # mvtec-nightly's pool: a GPU host runs its worker, this stack none
DEFAULT_PORT = 4200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie still answers kill(0); treat it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


@dataclass
class Stack:
    state_dir: Path = PROJECT_DIR / ".stack"
    port: int = DEFAULT_PORT
    project_dir: Path = PROJECT_DIR

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str(self.state_dir / "prefect-home"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(self.port),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_SHOW_PROMO="false",
            DO_NOT_TRACK="1",
            BENCH_PROJECT_DIR=str(self.project_dir),
            PYTHONUNBUFFERED="1",
        )
        return env

    def _pidfile(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        path = self._pidfile(name)
        if path.exists():
            pid = int(path.read_text())
            if _alive(pid):
                return pid
        return None

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
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

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

    def up(self, deploy: bool = True, timeout: float = 120) -> None:
        prefect_bin = str(Path(sys.executable).with_name("prefect"))
        if self.pid("server") and self.healthy():
            print(f"server already up at {self.ui_url} (pid {self.pid('server')})")
        else:
            self._spawn(
                "server",
                [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            )
            deadline = time.monotonic() + timeout
            while not self.healthy():
                if time.monotonic() > deadline or not self.pid("server"):
                    log = (self.state_dir / "server.log").read_text()[-3000:]
                    raise RuntimeError(f"Prefect server did not come up on {self.ui_url}:\n{log}")
                time.sleep(0.5)
            print(f"server up at {self.ui_url} (pid {self.pid('server')})")
        if self.prefect("work-pool", "inspect", WORK_POOL, check=False).returncode != 0:
            self.prefect("work-pool", "create", WORK_POOL, "--type", "process")
            # one benchmark at a time: two trainings would only fight over the same cores,
            # and it lets a new run know that any other `running` run is dead
            self.prefect("work-pool", "set-concurrency-limit", WORK_POOL, "1")
        if self.prefect("work-pool", "inspect", GPU_POOL, check=False).returncode != 0:
            self.prefect("work-pool", "create", GPU_POOL, "--type", "process")
        if deploy:
            result = self.prefect("--no-prompt", "deploy", "--all", check=False)
            if result.returncode != 0:
                raise RuntimeError(f"prefect deploy failed:\n{result.stdout}\n{result.stderr}")
            print("deployments created from prefect.yaml")
        if self.pid("worker"):
            print(f"worker already running (pid {self.pid('worker')})")
        else:
            for flow_run_id in self.crash_orphaned_flow_runs():
                print(f"flow run {flow_run_id} lost its worker: marked Crashed")
            self._spawn(
                "worker", [prefect_bin, "worker", "start", "--pool", WORK_POOL, "--type", "process"]
            )
            print(f"worker started (pid {self.pid('worker')})")
        (self.state_dir / "stack.json").write_text(json.dumps({"port": self.port}))

    def crash_orphaned_flow_runs(self) -> list[str]:
        """With no worker alive, a flow run of this pool still `Running` died with its
        worker (killed, machine restarted). Mark it Crashed, so it stops holding the pool's
        only slot and the next benchmark run can close its partial results."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            WorkPoolFilter,
            WorkPoolFilterName,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.states import Crashed

        active = FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CANCELLING])
            )
        )
        pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[WORK_POOL]))
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                orphans = client.read_flow_runs(flow_run_filter=active, work_pool_filter=pool)
                for run in orphans:
                    client.set_flow_run_state(
                        run.id,
                        Crashed(message="its worker stopped before it finished"),
                        force=True,
                    )
        return [str(run.id) for run in orphans]

    def down(self) -> None:
        for name in ("worker", "server"):
            pid = self.pid(name)
            if pid is None:
                self._pidfile(name).unlink(missing_ok=True)
                continue
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(40):
                if not _alive(pid):
                    break
                time.sleep(0.25)
            else:
                os.killpg(pid, signal.SIGKILL)
            self._pidfile(name).unlink(missing_ok=True)
            print(f"stopped {name} (pid {pid})")

    def run_deployment(self, name: str, params: dict | None = None, timeout: float = 3600):
        args = ["deployment", "run", name, "--watch"]
        for key, value in (params or {}).items():
            args += ["--param", f"{key}={json.dumps(value)}"]
        return self.prefect(*args, check=False, timeout=timeout)


def _load_stack() -> Stack:
    state = PROJECT_DIR / ".stack" / "stack.json"
    port = json.loads(state.read_text())["port"] if state.exists() else DEFAULT_PORT
    return Stack(port=port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "run-demo", "status"])
    parser.add_argument("--port", type=int, default=None, help="server port (default 4200)")
    args = parser.parse_args(argv)
    stack = _load_stack()
    if args.port:
        stack.port = args.port
    if args.command == "up":
        stack.up()
    elif args.command == "down":
        stack.down()
    elif args.command == "status":
        for name in ("server", "worker"):
            pid = stack.pid(name)
            print(f"{name}: {f'running, pid {pid}' if pid else 'stopped'}")
        print(f"UI: {stack.ui_url} ({'healthy' if stack.healthy() else 'not answering'})")
    else:
        print(
            f"running deployment anomaly-benchmark/demo (watch it in the UI: {stack.ui_url}/runs)",
            flush=True,
        )
        result = stack.run_deployment("anomaly-benchmark/demo")
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
        report = PROJECT_DIR / "reports" / "latest.html"
        print(f"report: {report if report.exists() else '(not written)'}")
        print(f"Prefect UI: {stack.ui_url}")
        return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
