"""Deterministic train/validation/test splits: the `split` stage of dvc.yaml. A table's are stratified by
label; instructions (data.format instructions) have no label and are split at random, by split.seed.

Run by DVC as `python -m pipeline.data.split`; the files it writes are the data version.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.config import Config, DataConfig, load_config
from pipeline.data.readers import MESSAGES, READERS, RESPONSE, read_instructions, read_table, write_table
from pipeline.errors import DataError, TunegateError

SPLITS = ("train", "validation", "test")
BATCHES_DIR = "batches"   # under split.out_dir: one folder of splits per batch of continual.pool_dir
TEXT, LABEL = "text", "label"   # column names of the split files, whatever the raw files call them


@dataclass(frozen=True)
class SplitPaths:
    train: Path
    validation: Path
    test: Path


def split_paths(config: Config, batch: str | None = None) -> SplitPaths:
    """The data section's splits, or with `batch`, the splits of that batch of the continual pool."""
    out_dir = config.path(config.split.out_dir)
    if batch is not None:
        out_dir = out_dir / BATCHES_DIR / batch
    return SplitPaths(*(out_dir / f"{name}.csv" for name in SPLITS))


def to_canonical(frame: pd.DataFrame, data: DataConfig, source: str) -> pd.DataFrame:
    """Keep the text and label columns under canonical names, labels as the configured integers."""
    missing = [c for c in (data.text_column, data.label_column) if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}. "
                        f"Fix data.text_column / data.label_column in params.yaml or the file's header.")
    by_text = {str(value): value for value in data.labels}
    labels = frame[data.label_column].map(lambda v: by_text.get(str(v).strip()))
    bad = frame.loc[labels.isna(), data.label_column]
    if not bad.empty:
        raise DataError(f"{source}: {len(bad)} label(s) outside the label set {sorted(data.labels)}, "
                        f"e.g. {sorted(map(str, bad.unique()))[:5]} (first at data row {bad.index[0] + 1}).")
    return pd.DataFrame({TEXT: frame[data.text_column].astype(str), LABEL: labels.astype(int)})


def read_raw(config: Config, path: str) -> pd.DataFrame:
    """A raw file of the data section in the split columns: TEXT and LABEL, or MESSAGES and RESPONSE."""
    if config.data.format == "instructions":
        return read_instructions(config.path(path))
    return to_canonical(read_table(config.path(path)), config.data, path)


def _labels(frame: pd.DataFrame) -> pd.Series | None:
    """What a split is stratified by: the label, if the rows have one."""
    return frame[LABEL] if LABEL in frame else None


def make_splits(config: Config) -> dict[str, pd.DataFrame]:
    """Read the raw files and return train/validation/test frames, carving missing ones out of train."""
    data, split = config.data, config.split
    frames = {name: read_raw(config, path)
              for name, path in (("train", data.train), ("validation", data.validation), ("test", data.test))
              if path is not None}
    train = frames["train"]
    for name, fraction in (("test", split.test_fraction), ("validation", split.validation_fraction)):
        if name not in frames:
            train, frames[name] = carve(train, fraction, split.seed)
    if split.max_train_rows is not None and len(train) > split.max_train_rows:
        train, _ = train_test_split(train, train_size=split.max_train_rows, random_state=split.seed,
                                    stratify=_labels(train))
    frames["train"] = train
    return {name: frames[name].reset_index(drop=True) for name in SPLITS}


def carve(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, carved): a share of the rows set apart, stratified by label where there is one."""
    return train_test_split(frame, test_size=fraction, random_state=seed, stratify=_labels(frame))


def pool_batches(config: Config) -> list[str]:
    """Names of the batches in continual.pool_dir (one folder each), oldest name first."""
    pool = config.path(config.continual.pool_dir)
    return sorted(path.name for path in pool.iterdir() if path.is_dir()) if pool.is_dir() else []


def batch_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in READERS)


def read_batch(config: Config, path: Path) -> pd.DataFrame:
    """A batch (a data file, or a folder of them) in the canonical columns, as one frame."""
    files = [path] if path.is_file() else batch_files(path)
    if not files:
        raise DataError(f"{path}: no data file ({', '.join(READERS)}) in this batch.")
    return pd.concat([to_canonical(read_table(path), config.data, str(path)) for path in files], ignore_index=True)


def make_batch_splits(config: Config, folder: Path) -> dict[str, pd.DataFrame]:
    """A batch split as a data section without validation and test files is: test, then validation, carved out."""
    split = config.split
    train, test = carve(read_batch(config, folder), split.test_fraction, split.seed)
    train, validation = carve(train, split.validation_fraction, split.seed)
    frames = {"train": train, "validation": validation, "test": test}
    return {name: frames[name].reset_index(drop=True) for name in SPLITS}


def write_split(frame: pd.DataFrame, path: Path) -> None:
    if MESSAGES in frame:
        frame = frame.assign(**{MESSAGES: frame[MESSAGES].map(json.dumps)})
    write_table(frame, path)


def write_splits(config: Config) -> SplitPaths:
    paths = split_paths(config)
    for name, frame in make_splits(config).items():
        write_split(frame, getattr(paths, name))
    for batch in pool_batches(config):
        batch_paths = split_paths(config, batch)
        for name, frame in make_batch_splits(config, config.path(config.continual.pool_dir) / batch).items():
            write_split(frame, getattr(batch_paths, name))
    return paths


def read_split(path: Path) -> pd.DataFrame:
    """A split file as write_split wrote it: TEXT and LABEL, or MESSAGES (parsed) and RESPONSE."""
    frame = pd.read_csv(path, keep_default_na=False, dtype={TEXT: str, LABEL: int, MESSAGES: str, RESPONSE: str})
    if MESSAGES in frame:
        frame[MESSAGES] = frame[MESSAGES].map(json.loads)
    return frame


def main() -> int:
    try:
        paths = write_splits(load_config(Path.cwd()))
    except TunegateError as exc:
        print(f"split failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {paths.train.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
