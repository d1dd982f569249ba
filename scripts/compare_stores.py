"""Compare two results stores table by table, column by column, apart from timings.

Two runs of the same benchmark on the same host should store the same results: the
same validation rules, attempts, losses, metrics, ROC points, scores and inference-path
AUROCs. What legitimately differs is left out or normalised:

- timing columns (`TIMING`): latencies, throughput, setup and train seconds, timestamps,
  and the run counts that follow from time caps (timed and warm-up runs);
- run ids, flow-run ids, absolute paths of the checkouts and output folders, and the
  process id in `worker`: replaced by placeholders;
- `code_version`: reported, never an error on its own; likewise an inference path's
  AUROC that one side did not measure because its test pass ran past the time cap.

Rows are matched by each table's natural key (`KEYS`), so an added row (e.g. one more
inference path) shows as one extra row, not as every later row being different.

    python -m scripts.compare_stores BASELINE.duckdb CANDIDATE.duckdb \\
        --replace /work/main=<repo> --replace /work/restructure=<repo>

Exit code 0 when nothing differs outside `TIMING` and `code_version`, else 1.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import duckdb

TIMING = {
    "p50_ms",
    "p95_ms",
    "throughput_ips",
    "peak_memory_mb",
    "setup_seconds",
    "train_seconds",
    "seconds",
    "written_at",
    "started_at",
    "ended_at",
    "applied_at",
    "checked_at",
    "timed_runs",
    "warmup_runs",
}
REPORTED_ONLY = {"code_version"}
# A path whose test pass ran past its time cap stores no AUROC, with this error: which
# side that happens on depends on timing, so those columns are reported, not counted.
TIME_CAP = "test pass exceeded time cap"
CAPPED = {"image_auroc", "auroc_delta", "error"}
KEYS = {
    "schema_version": ("version",),
    "runs": ("run_id",),
    "validations": ("category", "tool", "rule"),
    "results": ("model", "category"),
    "training_attempts": ("model", "category", "attempt"),
    "recoveries": ("model", "category", "attempt", "spike_step"),
    "stages": ("model", "category", "stage"),
    "losses": ("model", "category", "attempt", "step", "loss_name"),
    "metrics": ("model", "category", "metric"),
    "roc_points": ("model", "category", "level", "idx"),
    "scores": ("model", "category", "path"),
    "latency": ("model", "category", "path"),
    "artifacts": ("model", "category", "kind"),
}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def read(db: Path) -> dict[str, tuple[list[str], list[str], list[tuple]]]:
    """table -> (column names, column types, rows)."""
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' ORDER BY table_name"
            ).fetchall()
        ]
        out = {}
        for table in tables:
            cursor = con.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()  # before the next query: it reuses the connection
            types = [
                r[0]
                for r in con.execute(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = ? "
                    "ORDER BY ordinal_position",
                    [table],
                ).fetchall()
            ]
            out[table] = (names, types, rows)
        return out


def normaliser(replacements: list[tuple[str, str]]):
    """A function that rewrites run ids, absolute paths and pids inside any value."""
    ordered = sorted(replacements, key=lambda r: -len(r[0]))

    def text(value: str) -> str:
        for old, new in ordered:
            value = value.replace(old, new)
        value = UUID.sub("<run-id>", value)
        return re.sub(r"(:)\d+$", r"\1<pid>", value) if value.count(":") == 1 else value

    def norm(value: Any) -> Any:
        if isinstance(value, str):
            if value[:1] in "{[":
                try:
                    return norm_json(json.loads(value))
                except ValueError:
                    pass
            return text(value)
        if isinstance(value, list | tuple):
            return [norm(v) for v in value]
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        return value

    def norm_json(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm_json(v) for v in value]
        return text(value) if isinstance(value, str) else value

    return norm


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def compare(baseline: Path, candidate: Path, replacements: list[tuple[str, str]]) -> int:
    norm = normaliser(replacements)
    old, new = read(baseline), read(candidate)
    problems = 0
    for table in sorted(set(old) | set(new)):
        if table not in old or table not in new:
            print(f"{table}: only in {'candidate' if table in new else 'baseline'}")
            problems += 1
            continue
        (names_a, types_a, rows_a), (names_b, types_b, rows_b) = old[table], new[table]
        if list(zip(names_a, types_a, strict=True)) != list(zip(names_b, types_b, strict=True)):
            print(f"{table}: columns differ:\n  {list(zip(names_a, types_a, strict=True))}\n  "
                  f"{list(zip(names_b, types_b, strict=True))}")  # fmt: skip
            problems += 1
            continue
        key = KEYS.get(table, tuple(names_a))
        index = [names_a.index(k) for k in key]

        def keyed(rows, names=names_a, index=index):
            return {tuple(str(norm(r[i])) for i in index): [norm(v) for v in r] for r in rows}

        a, b = keyed(rows_a), keyed(rows_b)
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        diffs: dict[str, list[str]] = {}
        timed_out: list[str] = []
        for k in sorted(set(a) & set(b)):
            capped = "error" in names_a and any(
                TIME_CAP in str(row[names_a.index("error")]) for row in (a[k], b[k])
            )
            for name, va, vb in zip(names_a, a[k], b[k], strict=True):
                if name in TIMING or same(va, vb):
                    continue
                if capped and name in CAPPED:
                    timed_out.append(f"{'/'.join(k)}.{name}: {va!r} -> {vb!r}")
                    continue
                diffs.setdefault(name, []).append(f"{'/'.join(k)}: {va!r} -> {vb!r}")
        status = "same" if not (missing or extra or diffs) else "DIFFERS"
        print(f"{table}: {len(rows_a)} rows / {len(rows_b)} rows, {status}")
        for k in missing:
            print(f"  only in baseline: {'/'.join(k)}")
        for k in extra:
            print(f"  only in candidate: {'/'.join(k)}")
        for example in timed_out:
            print(f"  timing-dependent (a time cap cut one side's test pass): {example[:200]}")
        for name, examples in diffs.items():
            print(f"  column {name}: {len(examples)} rows differ, e.g.")
            for example in examples[:3]:
                print(f"    {example[:300]}")
        problems += len(missing) + len(extra)
        problems += sum(len(v) for n, v in diffs.items() if n not in REPORTED_ONLY)
    ignored = ", ".join(sorted(TIMING))
    print(f"\ntiming columns not compared: {ignored}")
    print("result:", "no differences" if not problems else f"{problems} differences")
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument(
        "--replace",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="replace OLD by NEW in every text value (absolute paths), repeatable",
    )
    args = parser.parse_args(argv)
    replacements = [tuple(r.split("=", 1)) for r in args.replace]
    return compare(args.baseline, args.candidate, replacements)


if __name__ == "__main__":
    sys.exit(main())
