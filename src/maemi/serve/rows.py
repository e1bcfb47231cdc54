"""Result tables that survive a kill: one row per item, appended as CSV or JSONL, resumable without loss or repeats.

Each `write` appends a whole batch of rows with one `os.write` and an fsync, so a process killed at any moment leaves
every earlier batch intact and at most one torn row at the end. Opening with `resume=True` cuts that torn row off,
checks the file has this run's columns and lists the keys already written; without `resume` an existing non-empty file
is an error: a finished table is never overwritten by mistake.

The format follows the file's suffix. JSONL rows are written as given (nested values stay nested). CSV is flat: a
column named `parent.child` holds `row[parent][child]` (empty when `row[parent]` is None), a list becomes its JSON
text, None an empty cell.

Same idea as maemi.teachers.records.RecordWriter (instruction records keyed by id), for tables of results.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from maemi.fileio import append_durably, truncate_file

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


class RowFileError(ValueError):
    """An existing table that cannot be continued: other columns, or a damaged row before the end."""


def table_format(path: str | os.PathLike) -> str:
    """"csv" or "jsonl" from the suffix; ValueError naming the path otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown output format {suffix or '(no suffix)'!r}; use a .csv or .jsonl file")
    return FORMATS[suffix]


def check_table_path(path: str | os.PathLike, resume: bool) -> None:
    """Fail before any work: an unknown suffix (ValueError), or an existing table without resume (FileExistsError)."""
    path = Path(path)
    table_format(path)
    if not resume and path.is_file() and path.stat().st_size > 0:
        raise FileExistsError(f"{path}: already exists; pass --resume to continue it, or choose another output path")


def _csv_cell(row: dict, column: str) -> object:
    parent, _, child = column.partition(".")
    value = row.get(parent)
    if child:
        value = None if value is None else value.get(child)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    """(complete lines with their b"\\n", the torn tail after the last one)."""
    *complete, tail = data.split(b"\n")
    return [line + b"\n" for line in complete], tail


class RowWriter:
    """Append rows (dicts keyed by `columns`) to a CSV or JSONL table; `done()` lists the `key` values written.
    `key` is a column, or several (a tuple) where an item has many rows, as an image has its objects: then each key is
    the tuple of those values, as text (a CSV cell reads back as text)."""

    def __init__(self, path: str | os.PathLike, columns: list[str], key: str | tuple[str, ...] = "path",
                 resume: bool = False) -> None:
        self.path = Path(path)
        self.format = table_format(self.path)
        self.columns, self.key, self.resume = list(columns), key, resume
        self._top_level = list(dict.fromkeys(c.partition(".")[0] for c in self.columns))  # JSONL keys, in order
        self._fd: int | None = None
        self._done: set[str] = set()

    def __enter__(self) -> RowWriter:
        check_table_path(self.path, self.resume)
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._done = self._recover()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.format == "csv" and os.fstat(self._fd).st_size == 0:
            self._append(self._encode_csv([dict(zip(self.columns, self.columns))], header=True))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def done(self) -> set:
        """Keys of the rows already in the table, those written by this writer included."""
        return set(self._done)

    def _key_of(self, row) -> object:
        """The key of a row: a dict (JSONL, or a row to write), or a CSV row's cells (a list in column order)."""
        get = row.get if isinstance(row, dict) else lambda c: row[self.columns.index(c)]
        if isinstance(self.key, str):
            return get(self.key)
        return tuple(str(get(c)) for c in self.key)

    def write(self, rows: Iterable[dict]) -> int:
        """Append the rows whose key is not in the table yet, in one write + fsync; returns how many were new."""
        if self._fd is None:
            raise RuntimeError("RowWriter is not open; use it as a context manager")
        new = []
        for row in rows:
            key = self._key_of(row)
            if key not in self._done:
                self._done.add(key)
                new.append(row)
        if new:
            self._append(self._encode_csv(new) if self.format == "csv" else self._encode_jsonl(new))
        return len(new)

    # -------------------------------------------------------------------------------------------------- encoding

    def _encode_csv(self, rows: list[dict], header: bool = False) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for row in rows:
            writer.writerow(row[c] if header else _csv_cell(row, c) for c in self.columns)
        return buffer.getvalue().encode("utf-8")

    def _encode_jsonl(self, rows: list[dict]) -> bytes:
        return "".join(json.dumps({k: row.get(k) for k in self._top_level}, ensure_ascii=False) + "\n"
                       for row in rows).encode("utf-8")

    def _append(self, data: bytes) -> None:
        append_durably(self._fd, data)

    # -------------------------------------------------------------------------------------------------- resuming

    def _recover(self) -> set[str]:
        """Cut a torn last row off the file, check its columns, and return the keys it holds."""
        data = self.path.read_bytes()
        lines, _ = _lines(data)
        keys, keep = self._read_csv(lines) if self.format == "csv" else self._read_jsonl(lines)
        if keep < len(data):
            truncate_file(self.path, keep)
        return set(keys)

    def _read_csv(self, lines: list[bytes]) -> tuple[list[str], int]:
        """(keys of the complete rows, bytes they and the header span). A row cut inside a quoted field (a caption
        with a line break) ends the file early: strict parsing reports it, and it is dropped like a torn line."""
        ends = [0]
        for line in lines:
            ends.append(ends[-1] + len(line))
        reader = csv.reader((line.decode("utf-8") for line in lines), strict=True)
        keys: list[str] = []
        keep = 0
        while True:
            first_line = reader.line_num + 1  # where the next row starts (a row may span lines)
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError):
                if reader.line_num < len(lines):  # damage before the last line is not a kill mid-write
                    raise RowFileError(f"{self.path}:{first_line}: not a valid CSV row") from None
                break
            if keep == 0:  # the header
                if row != self.columns:
                    raise RowFileError(self._other_columns(row))
            elif len(row) != len(self.columns):
                if reader.line_num < len(lines):
                    raise RowFileError(f"{self.path}:{first_line}: {len(row)} fields, expected {len(self.columns)}")
                break
            else:
                keys.append(self._key_of(row))
            keep = ends[reader.line_num]
        return keys, keep

    def _read_jsonl(self, lines: list[bytes]) -> tuple[list[str], int]:
        keys: list[str] = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RowFileError(f"{self.path}:{n}: not valid JSON") from None
            if not isinstance(row, dict) or list(row) != self._top_level:
                raise RowFileError(self._other_columns(list(row) if isinstance(row, dict) else row, line=n))
            keys.append(self._key_of(row))
        return keys, sum(len(line) for line in lines)

    def _other_columns(self, found: object, line: int | None = None) -> str:
        where = f"{self.path}:{line}" if line else str(self.path)
        expected = self.columns if self.format == "csv" else self._top_level
        return (f"{where}: written with other columns ({found}) than this run's ({expected}); resume with the same "
                f"options, or choose another output path")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a table RowWriter wrote, as dicts keyed like the rows it was given: JSONL as written; CSV cells as
    text (an empty cell is None) with `parent.child` columns gathered into `row[parent]` (None where all are empty).
    A torn last line (a kill mid-write) is left out, as a resume would."""
    path = Path(path)
    data = path.read_bytes()
    lines, _ = _lines(data)
    if table_format(path) == "jsonl":
        return [json.loads(line) for line in lines if line.strip()]
    rows = []
    for cells in csv.DictReader(line.decode("utf-8") for line in lines):
        row: dict = {}
        for column, text in cells.items():
            value = text if text != "" else None
            parent, _, child = column.partition(".")
            if child:
                row.setdefault(parent, {})[child] = value
            else:
                row[column] = value
        for key, value in row.items():
            if isinstance(value, dict) and all(v is None for v in value.values()):
                row[key] = None
        rows.append(row)
    return rows
