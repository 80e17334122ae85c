"""Rows of record files (JSONL, one object per line, or CSV with a header), each with the "path:line" it came
from, so that every error about a row can name it. Task files for fine-tuning and few-shot evaluation are read here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..files import json_object, read_text_file


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """("path:line", row) for the rows of a JSONL (one object per line) or CSV (with a header) file."""
    path = Path(path)
    if path.suffix == ".csv":
        return list(csv_rows(path))
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"task file {path} must be .jsonl (one JSON object per line) or .csv")
    return list(jsonl_objects(path))


def csv_rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """("path:line", {column: value}) for each row after the header, the line being the row's first.

    A row that does not parse, or whose fields do not match the header, is a ValueError naming its line:
    csv.DictReader would fill the gap with None or an extra None key, and the row would train as a class "None".
    """
    text = read_text_file(path, "task file").removeprefix("\ufeff")  # the byte-order mark of Excel's UTF-8 CSV
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, strict=True)  # strict: an unclosed quote is an error, not a field up to the end
        header, line = None, 1
        try:
            for row in reader:
                where, line = f"{path}:{line}", reader.line_num + 1
                if not row:  # a blank line
                    continue
                if header is None:
                    header = row
                    if len(set(header)) < len(header):
                        raise ValueError(f"{where}: the header names a column twice ({header})")
                elif len(row) != len(header):
                    raise ValueError(
                        f"{where}: {len(row)} fields, but the header has {len(header)} "
                        "(an unquoted comma, or a quote left open?)"
                    )
                else:
                    yield where, dict(zip(header, row, strict=True))
        except csv.Error as e:
            raise ValueError(f"{path}:{line}: not valid CSV ({e}; a quote left open?)") from None


def jsonl_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("path:line", object) for each non-blank line; a line that is not a JSON object is a ValueError naming it."""
    for number, line in enumerate(read_text_file(path, "task file").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        yield where, json_object(line, where)
