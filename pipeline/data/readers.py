"""Reading labelled tables (CSV, TSV, Parquet, JSON Lines) and instruction files (JSON Lines) into data frames."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import DataError

READERS = {".csv": ",", ".tsv": "\t", ".parquet": None, ".jsonl": None, ".json": None}
JSON_LINES = (".jsonl", ".json")
# An instruction row, whichever form its record had: the conversation before the answer (a list of
# {"role", "content"} turns) and the assistant's answer. Split files hold the messages as JSON text.
MESSAGES, RESPONSE = "messages", "response"
Messages = list[dict[str, str]]


def _decode(path: Path, raw: bytes) -> str:
    """UTF-8 text with or without a byte order mark; any other bytes stop with the line they are on."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}: not UTF-8 text: byte {raw[exc.start]:#04x} at line {line}, column {column} "
                        f"({exc.reason}). Re-save the file as UTF-8.") from exc


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such file. Check the path in params.yaml (data section) or on the command line.")


def _json_objects(path: Path, text: str, fields: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per line; blank lines are skipped, a bad line stops with its number."""
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
                            f"{fields} fields.")
        yield number, record


def _read_json_lines(path: Path, text: str) -> pd.DataFrame:
    return pd.DataFrame.from_records([record for _, record in _json_objects(path, text, "text and label")])


def _text(value: Any) -> bool:
    return isinstance(value, str)


def instruction_row(record: dict[str, Any]) -> tuple[Messages, str]:
    """(conversation before the answer, answer) of a chat or a prompt/response record; ValueError says what is
    wrong with it."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("its messages field is not a list of turns")
        for i, turn in enumerate(messages, start=1):
            if not (isinstance(turn, dict) and _text(turn.get("role")) and _text(turn.get("content"))):
                raise ValueError(f"its message {i} is not an object with a role and a content string")
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise ValueError("its messages do not end with an assistant's turn (the response) after the prompt")
        return [{"role": t["role"], "content": t["content"]} for t in messages[:-1]], messages[-1]["content"]
    if "prompt" in record or "response" in record:
        if not (_text(record.get("prompt")) and _text(record.get("response"))):
            raise ValueError("it needs both a prompt and a response string")
        return [{"role": "user", "content": record["prompt"]}], record["response"]
    raise ValueError(f"it has no messages field (chat) and no prompt and response fields; "
                     f"its fields: {', '.join(record) or 'none'}")


def read_instructions(path: str | Path) -> pd.DataFrame:
    """A JSON Lines file of instructions, each line {"messages": [{"role", "content"}, ...]} (the last turn the
    assistant's: the response) or {"prompt": ..., "response": ...}, as MESSAGES and RESPONSE columns.

    A line that is not such a record stops with the file and line number.
    """
    path = Path(path)
    if path.suffix.lower() not in JSON_LINES:
        raise DataError(f"{path}: instructions (data.format instructions) are JSON Lines (.jsonl), "
                        f"not {path.suffix or 'a file without extension'}.")
    _require_file(path)
    rows = []
    for number, record in _json_objects(path, _decode(path, path.read_bytes()), "messages (or prompt and response)"):
        try:
            rows.append(instruction_row(record))
        except ValueError as exc:
            raise DataError(f"{path}: line {number} is not an instruction: {exc}. Each line needs "
                            f'{{"messages": [{{"role": "user", "content": ...}}, {{"role": "assistant", '
                            f'"content": ...}}]}} or {{"prompt": ..., "response": ...}}.') from exc
    if not rows:
        raise DataError(f"{path}: no instructions in the file.")
    return pd.DataFrame({MESSAGES: [m for m, _ in rows], RESPONSE: [r for _, r in rows]})


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table by its extension; text stays text (no NaN for empty strings, no type guessing of text)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(READERS)}.")
    _require_file(path)
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:   # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: cannot be read as Parquet: {exc}") from exc
    else:
        text = _decode(path, path.read_bytes())
        if not text.strip():
            raise DataError(f"{path}: the file is empty; it needs a header line and data rows.")
        if suffix in JSON_LINES:
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
