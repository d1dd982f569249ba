"""The documentation cannot drift from the code it describes: every DuckDB table and
column (with its type) is in docs/schema.md, in the schema's order; every rule of the
dataset gate is in docs/validation.md; every profile is in docs/profiles.md; and the
README stays a user guide that names no CPU or GPU model and gives no timing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from checks.dataset_expectations import GX_RULES
from checks.manifest_schema import RULES
from tasks.results.store.schema import TABLES
from tasks.runtime.profiles import PROFILES

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"


def documented_tables(text: str) -> dict[str, list[tuple[str, str]]]:
    """`### `name`` sections of schema.md and the (column, type) rows of their tables."""
    tables = {}
    for match in re.finditer(r"^### `(\w+)`\n(.*?)(?=^#{2,3} |\Z)", text, re.M | re.S):
        rows = re.findall(r"^\| `(\w+)` \| ([A-Z]+(?:\[\])?) \|", match.group(2), re.M)
        tables[match.group(1)] = rows
    return tables


def test_every_table_and_column_is_documented_with_its_type():
    documented = documented_tables((DOCS / "schema.md").read_text())
    assert list(documented) == [t.name for t in TABLES]
    for table in TABLES:
        assert documented[table.name] == [(c.name, c.type) for c in table.columns], table.name


def test_the_schema_check_notices_a_missing_column():
    text = (DOCS / "schema.md").read_text().replace("| `hardware` | VARCHAR |", "| gone |")
    latency = next(t for t in TABLES if t.name == "latency")
    assert documented_tables(text)["latency"] != [(c.name, c.type) for c in latency.columns]


def test_every_rule_of_the_gate_is_documented():
    text = (DOCS / "validation.md").read_text()
    names = [*RULES, *GX_RULES, "dataset_layout"]
    assert [n for n in names if f"`{n}`" not in text] == []


def test_every_profile_is_documented():
    text = (DOCS / "profiles.md").read_text()
    assert [p for p in PROFILES if f"### `{p}`" not in text] == []


def test_the_readme_is_a_short_user_guide():
    text = README.read_text()
    assert len(text.splitlines()) <= 260
    for page in ("architecture", "schema", "validation", "profiles", "performance"):
        assert f"(docs/{page}.md)" in text
    assert (DOCS / "images" / "report.png").stat().st_size > 20_000
    assert "docs/images/report.png" in text


@pytest.mark.parametrize("path", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_links_between_pages_resolve(path):
    for target in re.findall(r"\]\(([^)#:]+\.(?:md|png))(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_the_readme_names_no_hardware_and_gives_no_timing():
    pattern = re.compile(
        r"epyc|xeon|h200|a6000|zen ?3|sapphire|[0-9] ?ms\b|[0-9] ?s per|this machine|last pass",
        re.I,
    )
    assert [line for line in README.read_text().splitlines() if pattern.search(line)] == []


def test_a_section_is_rewritten_between_its_markers_and_nothing_else(tmp_path):
    from benchmarks.performance import write_section

    page = tmp_path / "performance.md"
    page.write_text("# Performance\n\nkept\n\n<!-- BEGIN a -->\nold\n<!-- END a -->\n\ntail\n")
    write_section(page, "a", "new")
    write_section(page, "b", "appended")
    assert page.read_text() == (
        "# Performance\n\nkept\n\n<!-- BEGIN a -->\nnew\n<!-- END a -->\n\ntail\n"
        "\n<!-- BEGIN b -->\nappended\n<!-- END b -->\n"
    )


def test_a_benchmark_writes_its_table_stamped_with_its_command(tmp_path):
    import subprocess
    import sys

    page = tmp_path / "performance.md"
    page.write_text("<!-- BEGIN nightly_wall_time -->\n<!-- END nightly_wall_time -->\n")
    command = ["-m", "benchmarks.cluster_speed", "--nightly", "4", "15"]
    done = subprocess.run(
        [sys.executable, *command, "--markdown", str(page)], cwd=README.parent, timeout=120
    )
    assert done.returncode == 0
    text = page.read_text()
    assert "`python -m benchmarks.cluster_speed --nightly 4 15`" in text  # --markdown left out
    assert "Computed (no timing" in text and "| 1 | 4.75 | 4.8 |" in text


def test_a_measured_section_names_the_hardware_read_from_the_machine():
    from benchmarks.performance import stamp
    from tasks.runtime.hardware import device_name

    text = stamp(command="python -m benchmarks.x")
    assert f"Measured on **{device_name('cpu')}**" in text and "`python -m benchmarks.x`" in text
