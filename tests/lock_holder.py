"""Another process holding a DuckDB file, as the DuckDB CLI, a notebook or a second
benchmark run would: `LockHolder(path, seconds)` returns once the lock is held."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys, time
import duckdb
connection = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


class LockHolder:
    def __init__(self, path: str | Path, seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(path), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "held"
        self.since = time.monotonic()

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
