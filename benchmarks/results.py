"""Appending a run's table to benchmarks/RESULTS.md."""

from __future__ import annotations

from datetime import date
from pathlib import Path


def append_section(path: Path, title: str, description: str, columns: list[str], rows: list[list]) -> None:
    """`## TITLE, DATE`, the description (machine, versions, settings), and a Markdown table of `rows`."""
    table = "".join(f"| {' | '.join(str(cell) for cell in row)} |\n" for row in rows)
    head = f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n## {title}, {date.today().isoformat()}\n{description}\n\n{head}{table}")
    print(f"rows appended to {path}")
