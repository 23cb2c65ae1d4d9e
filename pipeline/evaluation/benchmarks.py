"""General benchmarks: what the base model knew before fine-tuning, and how much of it a candidate kept.

A benchmark kind reads its file and scores a sentence encoder, given as a function from texts to
embeddings; adding a kind is one function and one entry in KINDS. Base scores are cached on disk,
keyed by hashes of the base weights and the benchmark file, since the base never changes.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from pipeline.config import GeneralBenchmark
from pipeline.errors import ConfigError, DataError

Embed = Callable[[list[str]], np.ndarray]   # texts -> one embedding row per text


@dataclass(frozen=True)
class Kind:
    score: str                                 # the score's name, e.g. spearman
    run: Callable[[Embed, Path], float]


def read_sts(path: Path) -> pd.DataFrame:
    """The STS Benchmark distribution format: tab-separated, no header; genre, file, year, id, score,
    sentence1, sentence2, then on some lines source fields that are not needed."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = [row[:7] for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    try:
        frame = pd.DataFrame(rows, columns=["genre", "file", "year", "id", "score", "sentence1", "sentence2"])
        frame["score"] = frame["score"].astype(float)
    except ValueError as exc:
        raise DataError(f"{path} is not in the STS Benchmark format (tab-separated genre, file, year, id, "
                        f"score, sentence1, sentence2): {exc}") from exc
    return frame


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def sts_spearman(embed: Embed, path: Path) -> float:
    """Spearman correlation of the pairs' cosine similarities with the gold similarity scores."""
    pairs = read_sts(path)
    texts = list(dict.fromkeys([*pairs["sentence1"], *pairs["sentence2"]]))   # each sentence embedded once
    row = {text: i for i, text in enumerate(texts)}
    vectors = embed(texts)
    first, second = (vectors[[row[t] for t in pairs[column]]] for column in ("sentence1", "sentence2"))
    return float(spearmanr(cosine_similarity(first, second), pairs["score"]).statistic)


KINDS: dict[str, Kind] = {"sts": Kind(score="spearman", run=sts_spearman)}


def kind_of(benchmark: GeneralBenchmark, index: int) -> Kind:
    if benchmark.kind not in KINDS:
        raise ConfigError(f"evaluate.general[{index}].kind {benchmark.kind!r} is unknown; known kinds: "
                          f"{', '.join(KINDS)}.")
    return KINDS[benchmark.kind]


def score_name(benchmark: GeneralBenchmark) -> str:
    return f"general_{benchmark.name}_{KINDS[benchmark.kind].score}"


def score(benchmark: GeneralBenchmark, path: Path, embed: Embed) -> float:
    return KINDS[benchmark.kind].run(embed, path)


def forgetting(name: str, base: float, candidate: float) -> dict[str, float]:
    """forgetting = base - candidate (positive: the candidate lost some of it); retained = candidate / base."""
    return {f"forgetting_{name}": base - candidate,
            f"retained_{name}": candidate / base if base != 0 else float("nan")}


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def base_cache_file(cache_dir: Path, benchmark: GeneralBenchmark, path: Path, weights_sha256: str,
                    max_length: int) -> Path:
    """Where the base model's score on a benchmark is kept: the name changes with anything that changes the score."""
    key = json.dumps({"weights": weights_sha256, "file": file_sha256(path), "kind": benchmark.kind,
                      "max_length": max_length}, sort_keys=True)
    return cache_dir / f"{benchmark.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def read_cached(cache_file: Path) -> float | None:
    if not cache_file.is_file():
        return None
    return float(json.loads(cache_file.read_text(encoding="utf-8"))["score"])


def write_cached(cache_file: Path, benchmark: GeneralBenchmark, base_model: str, value: float) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": benchmark.name, "kind": benchmark.kind, "base_model": base_model, "score": value}
    cache_file.write_text(json.dumps(record, indent=2), encoding="utf-8")
