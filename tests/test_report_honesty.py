"""What the store keeps and the report shows about rollbacks, failed stages, cached
results, validation intervals, and the validation rules (failing first, passing folded)."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime

import duckdb
from store_samples import model_result, validation_report

from checks.rule_result import RuleResult
from tasks.report.render import render_report
from tasks.results.store.result_store import ResultStore
from tasks.results.types import Recovery, StageOutcome
from tasks.training.cache import mark_cached

RUN = "run-h1"


def _result_with_rollback_and_failed_latency():
    result = model_result("efficientad", "demo_grid", image_auroc=0.9)
    chosen = result.attempts[1]
    chosen.validation_low, chosen.validation_high, chosen.validation_pairs = 0.8, 0.97, 108
    chosen.recoveries = [
        Recovery(2, 103, 101, 95, 8, 8, "train_loss", 40.0, 25.0, "robust_z", 5e-5, 2.5e-5)
    ]
    result.stages = [
        StageOutcome("export", "completed", None, 1.0),
        StageOutcome("latency", "failed", "RuntimeError: out of memory", 0.5),
    ]
    result.latency = []
    return result


def _store(tmp_path) -> ResultStore:
    store = ResultStore(tmp_path / "r.duckdb")
    store.start_run(
        RUN,
        flow_run_id=None,
        dataset="demo",
        data_root="data/demo",
        categories=["demo_grid", "demo_grass"],
        models=["efficientad", "patchcore"],
        profile="quick",
        started_at=datetime(2025, 2, 1, 8),
        environment={},
    )
    report = validation_report()
    report.rules.append(
        RuleResult("pandera", "demo_grid", "mask_is_binary", False, 1, ["m.png"], "0/255 only")
    )
    store.write_validations(RUN, report)
    return store


def test_rollbacks_failed_stages_cached_results_and_intervals_are_stored_and_shown(tmp_path):
    store = _store(tmp_path)
    store.write_result(RUN, _result_with_rollback_and_failed_latency())
    cached = dataclasses.replace(
        model_result("patchcore", "demo_grass", image_auroc=0.95), trained_in="run-h0"
    )
    store.write_result(RUN, mark_cached(cached, RUN))
    store.finish_run(RUN, "completed")

    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        assert con.execute("SELECT restored_step, onset_step FROM recoveries").fetchall() == [
            (95, 101)
        ]
        assert con.execute(
            "SELECT stage, status, error FROM stages WHERE model = 'efficientad' ORDER BY stage"
        ).fetchall() == [
            ("export", "completed", None),
            ("latency", "failed", "RuntimeError: out of memory"),
        ]
        assert con.execute(
            "SELECT validation_low, validation_high, validation_pairs FROM training_attempts "
            "WHERE chosen AND model = 'efficientad'"
        ).fetchall() == [(0.8, 0.97, 108)]
        assert con.execute("SELECT model, cached_from FROM results ORDER BY model").fetchall() == [
            ("efficientad", None),
            ("patchcore", "run-h0"),
        ]

    html = render_report(tmp_path / "r.duckdb", RUN, tmp_path / "reports").read_text()
    assert re.search(
        r'id="stage-failures".*latency failed: <code>RuntimeError: out of memory', html, re.S
    )
    assert "rolled back to step 95" in html  # the loss chart's marker and the attempts table
    assert 'id="callout-cached"' in html and "trained in run <code>run-h0</code>" in html
    assert "[0.80, 0.97], 108" in html


def test_validation_section_lists_failing_rules_first_and_folds_the_passing_ones(tmp_path):
    store = _store(tmp_path)
    store.finish_run(RUN, "completed")
    html = render_report(tmp_path / "r.duckdb", RUN, tmp_path / "reports").read_text()
    section = html[html.index('<section id="validation">') :]
    failing = section[: section.index('<details id="validation-passed">')]
    folded = section[section.index('<details id="validation-passed">') :]
    assert 'data-rule="mask_is_binary"' in failing and 'data-passed="true"' not in failing
    assert 'data-passed="false"' not in folded.split("</details>")[0]
    assert folded.count('data-passed="true"') == sum(r.passed for r in validation_report().rules)
