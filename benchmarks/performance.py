"""A benchmark's figures as a markdown section of docs/performance.md, stamped with what
made them: the hardware (read from the machine, `tasks.runtime.hardware.device_name`),
the load average, the code version, the date and the exact command.

A script collects its figures in a `Table` and ends with `publish(tables, args.markdown)`.
Run with `--markdown`, it writes each table into docs/performance.md between
`<!-- BEGIN <name> -->` and `<!-- END <name> -->` (appended at the end when the markers
are absent), and leaves every other line of the page as it was.
`python -m benchmarks.write_performance` runs the scripts that are cheap enough to rerun.

Example:
    >>> table = Table("decode", "Decoding", ["category", "decode ms"])
    >>> table.add("leather", 20.04)
    >>> print(table.markdown())
    | category | decode ms |
    | --- | --- |
    | leather | 20.0 |
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PERFORMANCE_MD = REPO / "docs" / "performance.md"


@dataclass
class Table:
    """One generated section: a heading, a markdown table, and notes under it."""

    name: str  # the marker name, unique in docs/performance.md
    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([cell if isinstance(cell, str) else _cell(cell) for cell in cells])

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "| " + " | ".join("---" for _ in self.columns) + " |",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def add_markdown_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown",
        nargs="?",
        const=PERFORMANCE_MD,
        default=None,
        type=Path,
        help="also write the figures into docs/performance.md (or the file given), "
        "stamped with this machine's hardware and this command",
    )


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as a person would type it, `--markdown` left out."""
    argv = list(sys.argv if argv is None else argv)
    args, kept, i = argv[1:], [], 0
    while i < len(args):
        if args[i] == "--markdown":  # and its path, when one follows
            i += 2 if i + 1 < len(args) and not args[i + 1].startswith("-") else 1
            continue
        if not args[i].startswith("--markdown="):
            kept.append(args[i])
        i += 1
    script = Path(argv[0]).resolve()
    if script.parent == REPO / "benchmarks":
        head = ["python", "-m", f"benchmarks.{script.stem}"]
    else:
        head = ["python", argv[0]]
    return shlex.join(head + kept)


def stamp(hardware: str | None = None, command: str | None = None, kind: str = "measured") -> str:
    """Where, when, with which code and by which command the figures were made. `kind`:
    "measured" here and now; "computed" (no timing: the same anywhere); or "stored"
    (timed earlier, on `hardware`, and read back from the file `command` names)."""
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    command = command or command_line()
    if kind == "computed":
        version = code_version()
        return (
            f"Computed (no timing: any machine gives these), code `{version}`, {day}, "
            f"by\n`{command}`"
        )
    if kind == "stored":
        return (
            f"Measured on **{hardware}**; written {day} from the figures that run stored, "
            f"by\n`{command}`"
        )
    if hardware is None:
        from tasks.runtime.hardware import device_name

        hardware = device_name("cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"Measured on **{hardware}** (load average {load:.1f} at the end, others' work "
        f"included), code `{code_version()}`, {day}, by\n`{command}`"
    )


def code_version() -> str:
    """`git describe --always`, with `-dirty` when files other than this page changed
    (writing one section must not mark the next one's code as modified)."""
    from tasks.results.provenance import detect_code_version

    try:
        described = subprocess.run(
            ["git", "describe", "--always"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", f":!{PERFORMANCE_MD.relative_to(REPO)}"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return detect_code_version()
    return described + ("-dirty" if changed else "")


def section(
    tables: Sequence[Table],
    hardware: str | None = None,
    command: str | None = None,
    kind: str = "measured",
) -> str:
    """The markdown of one generated section (several tables share one stamp)."""
    parts = [stamp(hardware, command, kind)]
    for table in tables:
        if len(tables) > 1:
            parts.append(f"**{table.title}**")
        else:
            parts[0] += f". {table.title}:"
        parts.append(table.markdown())
        if table.notes:
            parts.append("\n".join(f"- {note}" for note in table.notes))
    return "\n\n".join(parts)


def write_section(path: Path, name: str, body: str) -> None:
    """Put `body` between the `name` markers of `path` (appended when they are absent)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)


def publish(
    tables: Table | Iterable[Table],
    destination: Path | None,
    *,
    name: str | None = None,
    hardware: str | None = None,
    command: str | None = None,
    kind: str = "measured",
) -> None:
    """Print the tables as markdown; with a `destination` (`--markdown`), also write them
    there as one section named `name` (default: the first table's). See `stamp` for
    `kind`."""
    tables = [tables] if isinstance(tables, Table) else list(tables)
    body = section(tables, hardware, command, kind)
    print("\n" + body)
    if destination is not None:
        write_section(Path(destination), name or tables[0].name, body)
        print(f"\nwritten to {destination} (section {name or tables[0].name})")


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 1 or value == 0:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)
