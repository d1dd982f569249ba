"""Every write path fails by name: a read-only folder or a full disk under the results
store, the manifest cache, the output folder or the reports is reported with the path and
the OS error (not as a schema problem), the run is recorded `failed`, and no temporary or
half-written file is left.

How the faults are made, since the tests run as root (for whom chmod makes nothing
read-only):
- a read-only bind mount and a small tmpfs, real filesystems the kernel refuses to write
  or fill further; skipped, saying why, where this machine does not allow mounts;
- `RLIMIT_FSIZE` (the kernel refuses to grow a file past it, EFBIG once SIGXFSZ is
  ignored) in a child process: needs no privilege, so the full-disk case always runs.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
from store_v1 import create_v1_store

from tasks.results.store.migrations import SchemaError
from tasks.results.store.result_store import ResultStore, StoreUnwritable
from tasks.runtime.writes import WriteFailed, write_atomic

REPO = Path(__file__).resolve().parents[1]


def _mount(args: list[str], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount here ({done.stderr.strip() or 'mount failed'}): the "
            "RLIMIT_FSIZE tests below cover a full disk without mounting"
        )


@pytest.fixture
def mounts():
    """`mounts.read_only(folder)` (a read-only bind mount of itself) and
    `mounts.tmpfs(folder, size)`; every mount is undone after the test."""
    made: list[Path] = []

    class Mounts:
        @staticmethod
        def read_only(folder: Path) -> Path:
            _mount(["--bind", "-o", "ro", str(folder)], folder)
            made.append(folder)
            if os.access(folder, os.W_OK) and not os.statvfs(folder).f_flag & os.ST_RDONLY:
                pytest.skip(f"the bind mount of {folder} did not become read-only here")
            return folder

        @staticmethod
        def tmpfs(folder: Path, size: str) -> Path:
            _mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], folder)
            made.append(folder)
            return folder

    yield Mounts()
    for folder in reversed(made):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ---- the results store ---------------------------------------------------------------------


def test_a_store_in_a_read_only_folder_is_named_with_the_os_error(tmp_path, mounts):
    folder = tmp_path / "results"
    folder.mkdir()
    create_v1_store(folder / "old.duckdb")  # needs a migration: was "could not be migrated"
    ResultStore(folder / "current.duckdb")
    mounts.read_only(folder)

    for name in ("new.duckdb", "old.duckdb"):
        with pytest.raises(StoreUnwritable) as refused:
            ResultStore(folder / name)
        message = str(refused.value)
        assert str(folder / name) in message and "Read-only file system" in message, message
        assert "migrat" not in message and not isinstance(refused.value, SchemaError)
        assert refused.value.errno == errno.EROFS
    # a current file opens (reads work) and its first write names the file
    store = ResultStore(folder / "current.duckdb")
    with pytest.raises(StoreUnwritable, match=r"current\.duckdb.*Read-only file system"):
        store.start_run("r", flow_run_id=None, dataset="demo", data_root="d", categories=[],
                        models=[], profile="quick", environment={})  # fmt: skip
    with pytest.raises(StoreUnwritable, match=r"results store folder .*sub: \[Errno 30\]"):
        ResultStore(folder / "sub" / "b.duckdb")


def test_a_full_disk_under_the_store_is_named_and_keeps_what_was_stored(tmp_path, mounts):
    disk = mounts.tmpfs(tmp_path / "disk", "2m")
    store = ResultStore(disk / "b.duckdb")
    store.start_run("r", flow_run_id=None, dataset="demo", data_root="d", categories=[],
                    models=[], profile="quick", environment={})  # fmt: skip
    huge = {"notes": "x" * (8 << 20)}  # a run whose environment cannot fit on the disk
    with pytest.raises(StoreUnwritable) as refused:
        store.start_run("r2", flow_run_id=None, dataset="demo", data_root="d", categories=[],
                        models=[], profile="quick", environment=huge)  # fmt: skip
    assert str(disk / "b.duckdb") in str(refused.value)
    assert "No space left on device" in str(refused.value)
    assert store.query("SELECT run_id FROM runs")["run_id"].tolist() == ["r"]  # kept, whole


# ---- full disk, no privilege: RLIMIT_FSIZE in a child process --------------------------------

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def _limited(script: str, limit: int, env: dict | None = None) -> subprocess.CompletedProcess:
    code = LIMITED.format(limit=limit) + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
        env=env,
    )  # fmt: skip


def test_a_file_too_large_to_write_names_the_file_and_leaves_no_temporary(tmp_path):
    done = _limited(
        f"""
        from pathlib import Path
        from tasks.runtime.writes import write_atomic
        from tasks.results.store.result_store import ResultStore
        try:
            write_atomic(Path({str(tmp_path / "reports" / "latest.html")!r}), "x" * 200_000,
                         "report")
        except OSError as err:
            print("report:", type(err).__name__, err.errno, err)
        store = ResultStore({str(tmp_path / "store" / "b.duckdb")!r})
        try:  # a run whose environment record cannot fit under the limit
            store.start_run("r", flow_run_id=None, dataset="demo", data_root="d",
                            categories=[], models=[], profile="quick",
                            environment={{"notes": "x" * 200_000}})
        except OSError as err:
            print("store:", type(err).__name__, err.errno, err)
        """,
        limit=64 * 1024,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    report = tmp_path / "reports" / "latest.html"
    assert f"report: WriteFailed {errno.EFBIG} cannot write report {report}: [Errno 27]" in out
    assert "store: StoreUnwritable" in out and str(tmp_path / "store" / "b.duckdb") in out
    assert "File too large" in out.split("store:")[1]
    assert list((tmp_path / "reports").iterdir()) == []  # no temporary file, no half report


def _seed_cache(cache: Path, size: int) -> None:
    """A manifest cache as a large dataset validated earlier leaves it: `size` bytes of
    entries, which the next save carries over."""
    from tasks.validation.manifest import CACHE_VERSION

    facts = {"bytes": 1, "sha256": "0" * 64, "readable": True, "read_error": None,
             "width": 1, "height": 1, "mode": "L", "channels": 1, "mask_binary": None,
             "mask_empty": None}  # fmt: skip
    entry = {"signature": [1, 1, False], "facts": facts}
    count = size // (len(json.dumps(entry)) + 60)
    files = {f"/elsewhere/big_dataset/train/good/{i:07d}.png": entry for i in range(count)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"version": CACHE_VERSION, "files": files}))


def _validate_cli(db: Path, data: Path) -> str:
    return f"""
        from flows.validate_dataset import main
        code = main(["--dataset", "folder", "--data-root", {str(data)!r},
                     "--categories", "demo_grid", "--db", {str(db)!r}])
        print("exit", code)
        """


def _assert_run_failed_naming_the_cache(done, db: Path, reason: str) -> None:
    cache = db.parent / "manifest-cache" / "manifest.json"
    text = done.stdout + done.stderr
    assert "exit 1" in done.stdout, text[-3000:]
    assert f"cannot write manifest cache {cache}: " in text and reason in text, text[-3000:]
    with duckdb.connect(str(db), read_only=True) as con:
        ((status, error),) = con.execute("SELECT status, error FROM runs").fetchall()
    assert status == "failed" and f"cannot write manifest cache {cache}" in error
    assert reason in error
    assert [p.name for p in cache.parent.iterdir()] == ["manifest.json"]  # no temporary left


def test_a_manifest_cache_too_large_to_write_fails_the_run_by_name(
    tmp_path, demo_root, prefect_api
):
    """The RLIMIT_FSIZE variant, which runs everywhere: the validation flow in a child
    process limited to files of 2 MB, reporting to this session's Prefect server (its
    database is not under the limit); the store stays under it, the cache does not."""
    from prefect.settings import PREFECT_API_URL

    db = tmp_path / "results" / "v.duckdb"
    _seed_cache(db.parent / "manifest-cache" / "manifest.json", 3 << 20)
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONUNBUFFERED="1")
    done = _limited(_validate_cli(db, demo_root), limit=2 << 20, env=env)
    _assert_run_failed_naming_the_cache(done, db, "[Errno 27] File too large")


def test_a_full_disk_under_the_manifest_cache_fails_the_run_by_name(
    tmp_path, demo_root, mounts, prefect_api
):
    """The same on a real full filesystem: the store and its cache on a 4 MB tmpfs."""
    from prefect.settings import PREFECT_API_URL

    disk = mounts.tmpfs(tmp_path / "disk", "4m")
    db = disk / "v.duckdb"
    ResultStore(db)
    _seed_cache(db.parent / "manifest-cache" / "manifest.json", 1 << 20)
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (tmp_path / "disk" / "filler").write_bytes(b"\0" * max(0, free - (600 << 10)))
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_validate_cli(db, demo_root))],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    _assert_run_failed_naming_the_cache(done, db, "[Errno 28] No space left on device")


def test_a_report_on_a_full_disk_is_named_and_leaves_no_temporary(tmp_path, mounts):
    disk = mounts.tmpfs(tmp_path / "reports", "64k")
    with pytest.raises(WriteFailed) as refused:
        write_atomic(disk / "r1" / "report.html", "x" * 200_000, "report")
    assert str(refused.value).startswith(f"cannot write report {disk / 'r1' / 'report.html'}: ")
    assert "[Errno 28] No space left on device" in str(refused.value)
    assert list((disk / "r1").iterdir()) == []


def test_a_read_only_output_dir_fails_the_run_by_name(tmp_path, demo_root, mounts, prefect_api):
    from flows.benchmark import benchmark

    out = mounts.read_only(tmp_path / "runs")
    db = tmp_path / "b.duckdb"
    state = benchmark(
        data_root=str(demo_root), categories=["demo_grid"], models=["patchcore"], db=str(db),
        output_dir=str(out), reports_dir=str(tmp_path / "reports"), return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    with pytest.raises(
        WriteFailed, match=r"cannot create the output_dir folder .*runs/.*Read-only"
    ):
        state.result()
    with duckdb.connect(str(db), read_only=True) as con:
        ((status, error),) = con.execute("SELECT status, error FROM runs").fetchall()
        cells = con.execute("SELECT count(*) FROM cells").fetchone()[0]
    assert status == "failed" and "cannot create the output_dir folder" in error
    assert "Read-only file system" in error and cells == 0
