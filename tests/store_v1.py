"""The results store's first schema (version 1, before `schema_version` existed), copied
verbatim from tasks/store.py as released, so tests can build a file an earlier release
wrote and check that it is migrated."""

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS runs (
    run_id        VARCHAR PRIMARY KEY,
    flow_run_id   VARCHAR,
    started_at    TIMESTAMP NOT NULL,   -- UTC
    ended_at      TIMESTAMP,            -- UTC, NULL while running
    dataset       VARCHAR NOT NULL,
    data_root     VARCHAR NOT NULL,
    categories    VARCHAR[] NOT NULL,
    models        VARCHAR[] NOT NULL,
    profile       VARCHAR,
    status        VARCHAR NOT NULL,     -- running | completed | failed | ...
    code_version  VARCHAR NOT NULL,
    dataset_hash  VARCHAR NOT NULL DEFAULT '',
    dataset_notes VARCHAR[] NOT NULL DEFAULT [],
    environment   JSON
);
CREATE TABLE IF NOT EXISTS validations (
    run_id        VARCHAR NOT NULL,
    dataset       VARCHAR NOT NULL,
    category      VARCHAR NOT NULL,     -- '*' for dataset-wide rules
    tool          VARCHAR NOT NULL,     -- pandera | great_expectations | layout
    rule          VARCHAR NOT NULL,
    passed        BOOLEAN NOT NULL,
    failing_count INTEGER NOT NULL,
    examples      VARCHAR[] NOT NULL,
    message       VARCHAR NOT NULL,
    checked_at    TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id              VARCHAR NOT NULL,
    model               VARCHAR NOT NULL,
    category            VARCHAR NOT NULL,
    profile             VARCHAR,
    settings            JSON NOT NULL,
    weights             JSON NOT NULL,
    weights_source      VARCHAR NOT NULL,  -- pretrained | fallback | unknown
    paper_configuration BOOLEAN NOT NULL,
    device              VARCHAR,
    train_seconds       DOUBLE,
    status              VARCHAR NOT NULL,  -- completed | no_metrics
    notes               VARCHAR[] NOT NULL DEFAULT [],
    written_at          TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS training_attempts (
    run_id            VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    category          VARCHAR NOT NULL,
    attempt           INTEGER NOT NULL,
    seed              BIGINT,
    learning_rate     DOUBLE,
    steps             INTEGER,
    spike_step        INTEGER,
    spike_loss_name   VARCHAR,
    spike_value       DOUBLE,
    spike_magnitude   DOUBLE,
    end_reason        VARCHAR NOT NULL,
    retry_reason      VARCHAR,
    validation_metric DOUBLE,
    chosen            BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS losses (
    run_id    VARCHAR NOT NULL,
    model     VARCHAR NOT NULL,
    category  VARCHAR NOT NULL,
    attempt   INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    loss_name VARCHAR NOT NULL,
    value     DOUBLE                -- NaN/inf kept as such: they are what happened
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id    VARCHAR NOT NULL,
    model     VARCHAR NOT NULL,
    category  VARCHAR NOT NULL,
    metric    VARCHAR NOT NULL,
    value     DOUBLE,               -- NULL when not available, never 0
    available BOOLEAN NOT NULL,
    note      VARCHAR               -- e.g. 'not available: no masks', 'threshold: adaptive'
);
CREATE TABLE IF NOT EXISTS roc_points (
    run_id   VARCHAR NOT NULL,
    model    VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    level    VARCHAR NOT NULL,      -- image | pixel
    idx      INTEGER NOT NULL,      -- order along the curve
    fpr      DOUBLE NOT NULL,
    tpr      DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    run_id      VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,
    category    VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    label       INTEGER,            -- 0 good, 1 anomalous
    defect_type VARCHAR,
    score       DOUBLE
);
CREATE TABLE IF NOT EXISTS latency (
    run_id         VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    category       VARCHAR NOT NULL,
    idx            INTEGER NOT NULL, -- order given by training; 0 is the headline figure
    path           VARCHAR NOT NULL, -- what was timed: torch, openvino, anomalib_test...
    batch_size     INTEGER NOT NULL,
    device         VARCHAR NOT NULL,
    threads        INTEGER,
    precision      VARCHAR,
    p50_ms         DOUBLE NOT NULL,
    p95_ms         DOUBLE NOT NULL,
    throughput_ips DOUBLE NOT NULL,
    peak_memory_mb DOUBLE
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id   VARCHAR NOT NULL,
    model    VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    kind     VARCHAR NOT NULL,      -- e.g. overlay_best_0, overlay_worst_0, checkpoint
    path     VARCHAR NOT NULL
);
CREATE OR REPLACE VIEW metrics_wide AS
SELECT
    run_id, model, category,
    max(value) FILTER (WHERE metric = 'image_auroc') AS image_auroc,
    max(value) FILTER (WHERE metric = 'pixel_auroc') AS pixel_auroc,
    max(value) FILTER (WHERE metric = 'image_f1')    AS image_f1,
    max(value) FILTER (WHERE metric = 'pixel_f1')    AS pixel_f1,
    max(value) FILTER (WHERE metric = 'aupro')       AS aupro
FROM metrics
GROUP BY run_id, model, category;
"""


def create_v1_store(path, rows: bool = True) -> None:
    """A version-1 file; with `rows`, one completed run with one metric, written with
    version 1's positional inserts."""
    import duckdb

    with duckdb.connect(str(path)) as con:
        con.execute(SCHEMA_V1)
        if not rows:
            return
        con.execute(
            "INSERT INTO runs VALUES ('old-run', NULL, TIMESTAMP '2025-01-01 08:00:00',"
            " TIMESTAMP '2025-01-01 09:00:00', 'demo', '/data/demo', ['demo_grid'],"
            " ['patchcore'], 'quick', 'completed', 'v1', 'ab', [], '{}')"
        )
        con.execute(
            "INSERT INTO metrics VALUES ('old-run', 'patchcore', 'demo_grid',"
            " 'image_auroc', 0.97, true, NULL)"
        )
