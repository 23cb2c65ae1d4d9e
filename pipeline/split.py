"""Deterministic, stratified train/validation/test splits: the `split` stage of dvc.yaml.

Run by DVC as `python -m pipeline.split`; the files it writes are the data version.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from pipeline.config import Config, DataConfig, load_config
from pipeline.data import read_table, write_table
from pipeline.errors import DataError, TunegateError

SPLITS = ("train", "validation", "test")
TEXT, LABEL = "text", "label"   # column names of the split files, whatever the raw files call them


@dataclass(frozen=True)
class SplitPaths:
    train: Path
    validation: Path
    test: Path


def split_paths(config: Config) -> SplitPaths:
    out_dir = config.path(config.split.out_dir)
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


def make_splits(config: Config) -> dict[str, pd.DataFrame]:
    """Read the raw files and return train/validation/test frames, carving missing ones out of train."""
    data, split = config.data, config.split
    frames = {name: to_canonical(read_table(config.path(path)), data, path)
              for name, path in (("train", data.train), ("validation", data.validation), ("test", data.test))
              if path is not None}
    train = frames["train"]
    for name, fraction in (("test", split.test_fraction), ("validation", split.validation_fraction)):
        if name not in frames:
            train, frames[name] = train_test_split(train, test_size=fraction, random_state=split.seed,
                                                   stratify=train[LABEL])
    if split.max_train_rows is not None and len(train) > split.max_train_rows:
        train, _ = train_test_split(train, train_size=split.max_train_rows, random_state=split.seed,
                                    stratify=train[LABEL])
    frames["train"] = train
    return {name: frames[name].reset_index(drop=True) for name in SPLITS}


def write_splits(config: Config) -> SplitPaths:
    paths = split_paths(config)
    for name, frame in make_splits(config).items():
        write_table(frame, getattr(paths, name))
    return paths


def read_split(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={TEXT: str, LABEL: int})


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
