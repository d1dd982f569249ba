"""What is read back from the store: run comparison, history and the report's tables.

Example:
    >>> con.execute(COMPARE_SQL, {"run_id": "r2", "tolerance": 0.02}).df()
"""

from __future__ import annotations

import duckdb

# Runs are comparable when they read the same data (same root, same manifest hash) with
# the same profile; only completed runs serve as the earlier side.
COMPARE_SQL = """
WITH current_metrics AS (
    SELECT r.run_id, r.data_root, r.dataset_hash, coalesce(r.profile, '') AS profile,
           r.started_at, m.model, m.category, m.metric, m.value
    FROM runs r JOIN metrics m USING (run_id)
    WHERE r.run_id = $run_id
),
earlier_metrics AS (
    SELECT r.run_id, r.data_root, r.dataset_hash, coalesce(r.profile, '') AS profile,
           r.started_at, m.model, m.category, m.metric, m.value
    FROM runs r JOIN metrics m USING (run_id)
    WHERE r.status = 'completed' AND r.run_id <> $run_id AND r.dataset_hash <> ''
)
SELECT
    c.model, c.category, c.metric,
    c.value,
    p.run_id     AS previous_run_id,
    p.started_at AS previous_started_at,
    p.value      AS previous_value,
    c.value - p.value AS delta,
    coalesce(p.value - c.value > $tolerance, false) AS regression
FROM current_metrics c
ASOF LEFT JOIN earlier_metrics p
    ON  p.data_root = c.data_root AND p.dataset_hash = c.dataset_hash
    AND p.profile = c.profile
    AND p.model = c.model AND p.category = c.category AND p.metric = c.metric
    AND c.started_at > p.started_at
ORDER BY c.model, c.category, c.metric
"""


HISTORY_SQL = """
WITH this_run AS (
    SELECT data_root, dataset_hash, profile, started_at FROM runs WHERE run_id = $run_id
),
recent_runs AS (
    SELECT r.run_id, r.started_at, r.status, r.code_version
    FROM runs r, this_run t
    WHERE r.run_id = $run_id OR (
        r.status = 'completed' AND t.dataset_hash <> ''
        AND r.data_root = t.data_root AND r.dataset_hash = t.dataset_hash
        AND r.profile IS NOT DISTINCT FROM t.profile AND r.started_at <= t.started_at)
    ORDER BY r.started_at DESC
    LIMIT $limit
)
SELECT r.run_id, r.started_at, r.status, r.code_version, w.model, w.category,
       w.image_auroc, w.pixel_auroc, w.image_f1, w.pixel_f1, w.aupro
FROM recent_runs r JOIN metrics_wide w USING (run_id)
ORDER BY r.started_at, w.model, w.category
"""


# What the HTML report shows of one run ($run_id), table by table.
REPORT_SQL = {
    "results": "SELECT * FROM results WHERE run_id = $run_id ORDER BY model, category",
    "metrics": "SELECT * FROM metrics WHERE run_id = $run_id ORDER BY model, category, metric",
    "averages": """
        SELECT model, metric, avg(value) FILTER (WHERE available) AS value,
               count(*) FILTER (WHERE available) AS available, count(*) AS total
        FROM metrics WHERE run_id = $run_id GROUP BY model, metric""",
    "latency": "SELECT * FROM latency WHERE run_id = $run_id ORDER BY model, category, idx",
    "attempts": """
        SELECT * FROM training_attempts WHERE run_id = $run_id
        ORDER BY model, category, attempt""",
    "recoveries": "SELECT * FROM recoveries WHERE run_id = $run_id ORDER BY ALL",
    "stages": "SELECT * FROM stages WHERE run_id = $run_id ORDER BY model, category, stage",
    "losses": """
        SELECT model, category, attempt, loss_name, list(step ORDER BY step) AS steps,
               list(value ORDER BY step) AS values
        FROM losses WHERE run_id = $run_id
        GROUP BY ALL ORDER BY model, category, attempt, loss_name""",
    "roc": """
        SELECT model, category, level, list(fpr ORDER BY idx) AS fpr,
               list(tpr ORDER BY idx) AS tpr
        FROM roc_points WHERE run_id = $run_id
        GROUP BY ALL ORDER BY category, level, model""",
    "validations": """
        SELECT * FROM validations WHERE run_id = $run_id
        ORDER BY passed, tool, category, rule""",
    "artifacts": """
        SELECT * FROM artifacts WHERE run_id = $run_id ORDER BY model, category, kind""",
    "score_counts": """
        SELECT model, category, count(*) AS images, sum(label) AS anomalous
        FROM scores WHERE run_id = $run_id GROUP BY ALL""",
}


def rows(con: duckdb.DuckDBPyConnection, sql: str, run_id: str) -> list[dict]:
    cursor = con.execute(sql, {"run_id": run_id})
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
