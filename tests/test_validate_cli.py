"""`python -m flows.validate_dataset` as people and scripts call it: a real Prefect flow
run (temporary local server), a real DuckDB file, exit code 0 or 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _validate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PYTHONUNBUFFERED="1",
        # the temporary server may take longer than the default 20 s on 2 loaded cores
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.validate_dataset", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_the_flow_parameters(tmp_path):
    result = _validate(tmp_path, "--help")
    assert result.returncode == 0
    for flag in ("--dataset", "--data-root", "--categories", "--db"):
        assert flag in result.stdout


def test_broken_copy_exits_1_names_files_and_rules_and_stores_failures(tmp_path, demo_root):
    broken = tmp_path / "broken"
    shutil.copytree(demo_root / "demo_grid", broken / "demo_grid")
    truncated = sorted((broken / "demo_grid" / "train" / "good").glob("*.png"))[0]
    truncated.write_bytes(truncated.read_bytes()[:300])
    mask = sorted((broken / "demo_grid" / "ground_truth").rglob("*_mask.png"))[0]
    image = broken / "demo_grid" / "test" / mask.parent.name / mask.name.replace("_mask", "")
    mask.unlink()
    db = tmp_path / "v.duckdb"

    result = _validate(
        tmp_path,
        "--dataset",
        "folder",
        "--data-root",
        str(broken),
        "--categories",
        "demo_grid",
        "--db",
        str(db),
    )
    assert result.returncode == 1
    for needle in (str(truncated), str(image), "file_opens_as_image", "defect_has_mask"):
        assert needle in result.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        failed = dict(
            con.execute("select rule, failing_count from validations where not passed").fetchall()
        )
        status = con.execute("select status from runs").fetchone()[0]
    assert failed == {"file_opens_as_image": 1, "defect_has_mask": 1}
    assert status == "failed_validation"


def test_valid_demo_category_exits_0(tmp_path, demo_root):
    db = tmp_path / "v.duckdb"
    result = _validate(
        tmp_path,
        "--dataset",
        "demo",
        "--data-root",
        str(demo_root),
        "--categories",
        "demo_grid",
        "--db",
        str(db),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from validations where not passed").fetchone()[0] == 0
        assert con.execute("select status from runs").fetchone()[0] == "completed"
