"""Reading labelled tables (CSV, TSV, Parquet, JSON Lines) into data frames."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError

READERS = {".csv": ",", ".tsv": "\t", ".parquet": None, ".jsonl": None, ".json": None}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table by its extension; text stays text (no NaN for empty strings, no type guessing of text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(READERS)}.")
    if not path.is_file():
        raise DataError(f"{path}: no such file. Check the path in params.yaml (data section) or on the command line.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty.")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=True, encoding="utf-8", dtype=False)
        else:
            # utf-8-sig drops a BOM; the csv module handles CRLF and quoted newlines.
            frame = pd.read_csv(path, sep=READERS[suffix], encoding="utf-8-sig", keep_default_na=False,
                                quoting=csv.QUOTE_MINIMAL, dtype=str)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); re-save it as UTF-8.") from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be parsed as {suffix[1:].upper()}: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path}: no data rows (only a header?).")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")
