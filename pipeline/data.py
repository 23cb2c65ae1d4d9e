"""Reading labelled tables (CSV, TSV, Parquet, JSON Lines) into data frames."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError

READERS = {".csv": ",", ".tsv": "\t", ".parquet": None, ".jsonl": None, ".json": None}


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text with or without a byte order mark; any other bytes stop with the line they are on."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: not UTF-8 text: byte {raw[exc.start]:#04x} at line {line}, column {column} "
                        f"({exc.reason}). Re-save the file as UTF-8.") from exc


def _read_json_lines(path: Path, text: str) -> pd.DataFrame:
    """One JSON object per line; blank lines are skipped, a bad line stops with its number."""
    records = []
    for number, line in enumerate(text.split("\n"), start=1):   # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}); "
                            f"JSON Lines needs one JSON object per line.") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object with the "
                            f"text and label fields.")
        records.append(record)
    return pd.DataFrame.from_records(records)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table by its extension; text stays text (no NaN for empty strings, no type guessing of text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(READERS)}.")
    if not path.is_file():
        raise DataError(f"{path}: no such file. Check the path in params.yaml (data section) or on the command line.")
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:   # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: cannot be read as Parquet: {exc}") from exc
    else:
        text = _decode(path, path.read_bytes())
        if not text.strip():
            raise DataError(f"{path}: the file is empty; it needs a header line and data rows.")
        if suffix in (".jsonl", ".json"):
            frame = _read_json_lines(path, text)
        else:
            try:
                # The csv module handles CRLF line ends and quoted fields with newlines.
                frame = pd.read_csv(io.StringIO(text), sep=READERS[suffix], keep_default_na=False,
                                    quoting=csv.QUOTE_MINIMAL, dtype=str)
            except (ValueError, pd.errors.ParserError) as exc:
                raise DataError(f"{path}: cannot be parsed as {suffix[1:].upper()}: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: no data rows (only a header?).")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")
