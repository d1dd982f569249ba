"""Parameters mean what they say, from both entry points: the CLI (`python -m
flows.benchmark`, `python -m flows.validate_dataset`) and the flow itself, as
`prefect deployment run --param ...` calls it (tests/test_e2e_prefect.py runs one through a
real server). A blank or empty list never means "everything", a repeat never runs twice,
a NaN or out-of-range number is refused at once, and each refusal names the parameter."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import benchmark as benchmark_cli
from flows import validate_dataset as validate_cli
from tasks.models import registry
from tasks.runtime.parameters import (
    BenchmarkParameters,
    ParameterError,
    RunParameters,
    parse_overrides,
    split_names,
)
from tasks.runtime.profiles import ProfileError, load_profile

REPO = Path(__file__).resolve().parents[1]

# (CLI arguments, what the message must say); every one is refused before anything starts
REFUSED_ON_THE_CLI = [
    (["--categories", ""], "categories: item 1 of [''] is blank"),
    (["--categories", ","], "categories: item 1 of ['', ''] is blank"),
    (["--categories", "demo_grid,"], "categories: item 2 of ['demo_grid', ''] is blank"),
    (["--categories", "demo_grid,demo_grid"], "categories: 'demo_grid' is named twice"),
    (["--categories", "all,demo_grid"], "categories: 'all' means every category"),
    (["--models", ""], "models: item 1 of [''] is blank"),
    (["--models", "patchcore,patchcore"], "models: 'patchcore' is named twice"),
    (["--models", "patchcore,nope"], "unknown models ['nope']"),
    (["--db-lock-timeout-s", "nan"], "db_lock_timeout_s: Input should be a finite number"),
    (["--db-lock-timeout-s", "inf"], "db_lock_timeout_s: Input should be a finite number"),
    (["--db-lock-timeout-s", "-1"], "0 <= db_lock_timeout_s <= 86400"),
    (
        ["--overrides", "not json"],
        "--overrides: not valid JSON: Expecting value at line 1 column 1",
    ),
    (["--overrides", '{"latency_iters": 5,}'], "--overrides: not valid JSON: Expecting property"),
    (["--overrides", "[1]"], "--overrides: expected a JSON object"),
    (["--overrides", '{"patchcore": {"image_size": 100000}}'], "32 <= image_size <= 1024"),
    (["--overrides", '{"efficientad": {"lr": NaN}}'], "efficientad.lr: Input should be a finite"),
    (["--cluster", "local:0"], "N in local:N must be a whole number"),
]


@pytest.mark.parametrize(("args", "message"), REFUSED_ON_THE_CLI)
def test_the_benchmark_cli_refuses_before_starting_anything(args, message, tmp_path, capsys):
    db = tmp_path / "results" / "b.duckdb"
    # a folder that is not there: were the parameters let through, the run would stop at
    # its gate (exit 1) rather than train
    missing = ["--dataset", "folder", "--data-root", str(tmp_path / "missing")]
    code = benchmark_cli.main(
        [*missing, *args, "--db", str(db), "--output-dir", str(tmp_path / "runs")]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_the_validate_cli_refuses_blank_and_repeated_categories(tmp_path, capsys):
    for categories, message in [("", "is blank"), ("demo_grid,demo_grid", "named twice")]:
        code = validate_cli.main(
            ["--dataset", "folder", "--data-root", str(tmp_path / "missing"),
             "--categories", categories, "--db", str(tmp_path / "v.duckdb")]
        )  # fmt: skip
        assert code == 2 and "categories: " in (err := capsys.readouterr().err)
        assert message in err
    assert not (tmp_path / "v.duckdb").exists()


def test_a_real_cli_process_refuses_a_nan_timeout_at_once(tmp_path):
    """As a cron line would call it: exit 2 within seconds, no Prefect server started."""
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.benchmark", "--db-lock-timeout-s", "nan",
         "--dataset", "folder", "--data-root", str(tmp_path / "missing"),
         "--categories", "", "--db", str(tmp_path / "b.duckdb")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "db_lock_timeout_s: Input should be a finite number" in result.stderr
    assert "categories: item 1 of [''] is blank" in result.stderr  # every problem at once
    assert time.monotonic() - started < 60
    assert not (tmp_path / "b.duckdb").exists()
    assert not list((tmp_path / "prefect-home").glob("*.db")), "a Prefect server was started"


# ---- the flows' own check: what `prefect deployment run --param` reaches -----------------

FLOW_REFUSALS = [
    ({"categories": []}, "categories: the list is empty"),
    ({"categories": [""]}, "categories: item 1 of [''] is blank"),
    ({"categories": ["demo_grid", "demo_grid"]}, "'demo_grid' is named twice"),
    ({"models": ["patchcore", "patchcore"]}, "'patchcore' is named twice"),
    ({"models": []}, "models: the list is empty"),
    ({"db_lock_timeout_s": math.nan}, "db_lock_timeout_s: Input should be a finite number"),
    ({"db_lock_timeout_s": 1e9}, "0 <= db_lock_timeout_s <= 86400"),
    ({"output_dir": ""}, "output_dir: String should have at least 1 character"),
]


@pytest.mark.parametrize(("params", "message"), FLOW_REFUSALS)
def test_the_flow_refuses_what_the_cli_refuses(params, message, tmp_path, prefect_api):
    from flows.benchmark import benchmark

    db = tmp_path / "b.duckdb"
    missing = str(tmp_path / "missing")  # let through, the run would stop at its gate
    state = benchmark(db=str(db), dataset="folder", data_root=missing, **params, return_state=True)
    assert state.is_failed()
    with pytest.raises(ParameterError) as refused:
        state.result()
    assert message in str(refused.value)
    assert not db.exists()  # nothing recorded


def test_the_validate_flow_refuses_a_blank_category(tmp_path, prefect_api):
    from flows.validate_dataset import validate_dataset_flow

    state = validate_dataset_flow(
        dataset="folder", data_root=str(tmp_path / "missing"), categories=[" "],
        db=str(tmp_path / "v.duckdb"), return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    with pytest.raises(ParameterError, match="categories: item 1 of"):
        state.result()


# ---- the rules themselves ----------------------------------------------------------------


def test_all_or_nothing_given_means_every_one_and_only_so():
    assert BenchmarkParameters.check().chosen("models", ("a", "b")) == ["a", "b"]
    assert BenchmarkParameters.check(models=["ALL"]).chosen("models", ("a", "b")) == ["a", "b"]
    assert BenchmarkParameters.check(models=["b"]).chosen("models", ("a", "b")) == ["b"]
    assert BenchmarkParameters.check(categories=["all"]).chosen("categories", ()) is None
    assert RunParameters.check(categories=["x", "y"]).categories == ["x", "y"]


def test_the_cli_keeps_blank_items_so_that_they_are_refused():
    assert split_names(None) is None
    assert split_names("") == [""]
    assert split_names(" a, b ,") == ["a", "b", ""]


def test_malformed_overrides_name_the_flag_and_the_position():
    with pytest.raises(ParameterError) as raised:
        parse_overrides('{"patchcore": {"image_size": 64}')
    assert str(raised.value).startswith("--overrides: not valid JSON: ")
    assert "line 1 column 33 (character 32)" in str(raised.value)


def test_several_problems_are_listed_together():
    with pytest.raises(ParameterError) as raised:
        BenchmarkParameters.check(categories=[""], models=[], db_lock_timeout_s=math.inf)
    text = str(raised.value)
    assert "categories:" in text and "models:" in text and "db_lock_timeout_s:" in text


# ---- numeric settings: finite and in range -----------------------------------------------

BAD_SETTINGS = [
    ({"seed": math.nan}, "seed: Input should be a finite number"),
    ({"latency_iters": 10**9}, "3 <= latency_iters <= 100000"),
    ({"inference": {"max_seconds_per_path": math.inf}}, "0 < max_seconds_per_path <= 3600"),
    ({"inference": {"timed_runs": 0}}, "1 <= timed_runs <= 100000"),
    ({"spike": {"robust_z": math.nan}}, "spike.robust_z: Input should be a finite number"),
    ({"validation": {"anomaly_blend": [0.9, 0.1]}}, "low <= high"),
    ({"validation": {"split_ratio": 1.5}}, "0 < split_ratio < 1"),
    ({"patchcore": {"image_size": 100000}}, "patchcore.image_size"),
    ({"patchcore": {"num_neighbors": 10**9}}, "1 <= num_neighbors <= 100"),
    ({"patchcore": {"image_size": 64, "crop_size": 128}}, "must not exceed image_size"),
    ({"efficientad": {"max_steps": 10**8}}, "1 <= max_steps <= 1000000"),
    ({"efficientad": {"lr": math.inf}}, "0 < lr <= 1"),
    ({"efficientad": {"train_batch_size": 10**6}}, "1 <= train_batch_size <= 256"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_SETTINGS)
def test_nan_and_out_of_range_settings_are_refused_naming_field_and_range(overrides, message):
    with pytest.raises(ProfileError) as refused:
        registry.check_models(list(registry.names()), load_profile("quick", overrides))
    assert message in str(refused.value)


def test_every_shipped_profile_is_within_the_bounds():
    for name in ("quick", "cpu", "paper"):
        registry.check_models(list(registry.names()), load_profile(name))
