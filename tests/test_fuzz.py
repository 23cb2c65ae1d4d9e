"""Fuzz tests: whatever a user feeds the data loader, the audit or the config loader either loads or fails with
tunegate's own error (a message that says what to fix), never a traceback from a library.

The examples are derived from a fixed seed (derandomize) so that CI is repeatable; run with
`--hypothesis-seed=random` locally to explore further.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.audit.checks import audit_file
from pipeline.config import load_config
from pipeline.data.readers import READERS, read_table
from pipeline.errors import ConfigError, TunegateError
from tests.conftest import REPO

FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

cells = st.one_of(st.text(max_size=40), st.integers(-3, 3), st.floats(allow_nan=True), st.none(), st.booleans())
column_names = st.sampled_from(["sentence", "label", "text", "", " label ", "sentence"])


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def _table_bytes(suffix: str, header: list[str], rows: list[list]) -> bytes:
    """A table in one of the readable formats; cells are written as they come (None, floats, unicode)."""
    if suffix in (".jsonl", ".json"):
        return "\n".join(json.dumps(dict(zip(header, row))) for row in rows).encode()
    if suffix == ".parquet":
        # a Parquet file is rectangular: ragged rows are cut or padded to the header
        width = len(header)
        frame = pd.DataFrame([[None if c is None else str(c) for c in (row + [None] * width)[:width]] for row in rows],
                             columns=[f"{name}{i}" if header.count(name) > 1 else name for i, name in enumerate(header)])
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        return buffer.getvalue()
    out = io.StringIO()
    csv.writer(out, delimiter="," if suffix == ".csv" else "\t").writerows([header, *rows])
    return out.getvalue().encode("utf-8")


@FUZZ
@given(suffix=st.sampled_from(sorted(READERS)), payload=st.binary(max_size=300))
def test_random_bytes_load_or_fail_with_a_data_error(tmp_path: Path, suffix: str, payload: bytes):
    path = _write(tmp_path / f"data{suffix}", payload)
    try:
        frame = read_table(path)
    except TunegateError as exc:
        assert str(path) in str(exc)
    else:
        assert not frame.empty


@FUZZ
@given(suffix=st.sampled_from(sorted(READERS)), header=st.lists(column_names, min_size=1, max_size=3),
       rows=st.lists(st.lists(cells, min_size=1, max_size=3), min_size=0, max_size=6))
def test_random_table_shapes_load_or_fail_with_a_data_error(tmp_path: Path, suffix: str, header: list[str],
                                                           rows: list[list]):
    path = _write(tmp_path / f"data{suffix}", _table_bytes(suffix, header, rows))
    try:
        frame = read_table(path)
    except TunegateError as exc:
        assert str(path) in str(exc)
    else:
        assert list(frame.columns) == [str(c).strip() for c in frame.columns]


texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60)
labels = st.one_of(st.sampled_from([0, 1, "0", "1", "2", "positive", "", "1.5"]), st.none())


@pytest.fixture(scope="module")
def repo_config():
    return load_config(REPO)


@settings(FUZZ, max_examples=10)   # each audit builds and runs GX suites: seconds
@given(rows=st.lists(st.tuples(texts, labels), min_size=1, max_size=30),
       suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_the_audit_reports_or_fails_cleanly_on_random_unicode(tmp_path: Path, repo_config, rows, suffix: str):
    path = _write(tmp_path / f"batch{suffix}", _table_bytes(suffix, ["sentence", "label"], [list(r) for r in rows]))
    try:
        report = audit_file(repo_config.model_copy(update={"project_dir": tmp_path}), path)
    except TunegateError as exc:
        assert str(path) in str(exc)
    else:
        assert report.checks and report.json_path.is_file()
        # A label outside data.labels, or a missing one, is an error-level finding, never a pass.
        if any(label not in (0, 1, "0", "1") for _, label in rows):
            assert not report.passed


yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=10)


@FUZZ
@given(document=yaml_values)
def test_random_yaml_params_load_or_fail_with_a_config_error(tmp_path: Path, document):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(document, allow_unicode=True))
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def _keys(node: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        found.append(path)
        if isinstance(value, dict):
            found += _keys(value, f"{path}.")
    return found


OVERRIDABLE = [key for key in _keys(yaml.safe_load((REPO / "params.yaml").read_text()))
               if key.split(".")[0] not in ("data", "split")]


@FUZZ
@given(key=st.sampled_from(OVERRIDABLE), value=yaml_values)
def test_random_overrides_of_real_keys_load_or_name_the_key(key: str, value):
    override = f"{key}={json.dumps(value, allow_nan=True)}"
    try:
        load_config(REPO, [override])
    except ConfigError as exc:
        # The message points at the key that was set (or one under it, for a section set to a mapping).
        assert key.split(".")[0] in str(exc)
