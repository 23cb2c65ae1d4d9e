"""The data audit on small files built for each case: real Great Expectations, real tokenizer, real files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.cli import main
from pipeline.audit import slices
from pipeline.audit.checks import audit_file, audit_raw_data, batch_definition, class_table, validate
from pipeline.audit.expectations import class_specs
from pipeline.config import load_config
from pipeline.data.readers import read_table
from pipeline.errors import AuditFailed, ConfigError, DataError
from tests.conftest import REPO, make_project

LEXICON = {"gender": {"women": ["she", "her"], "men": ["he", "his"]}}
ROWS = 40


def clean_rows() -> pd.DataFrame:
    """40 unique texts, labels 0 and 1 alternating, half mentioning 'she' and half 'he', each with half positives:
    every check passes with the test lexicon."""
    pronouns = ["she", "she", "he", "he"]
    return pd.DataFrame({"sentence": [f"film {i}: {pronouns[i % 4]} found it worth a look" for i in range(ROWS)],
                         "label": [str(i % 2) for i in range(ROWS)]})


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


def audit_project(root: Path, train: pd.DataFrame, validation: pd.DataFrame | None = None,
                 suffix: str = ".tsv", overrides: dict | None = None) -> Path:
    """A project whose raw files are the given frames, with the test lexicon; small classes and slices allowed;
    overrides: audit keys (`checks.duplicates.severity`) and their values."""
    audit = {"checks": {"rows_per_class": {"min_rows": 10}}, "bias": {"lexicon": "lexicon.yaml", "min_slice_rows": 5}}
    for key, value in (overrides or {}).items():
        *sections, name = key.split(".")
        node = audit
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    make_project(root, parts=(), audit=audit,
                 data={"train": f"raw/train{suffix}", "validation": None if validation is None else "raw/validation.tsv",
                       "test": None})
    (root / "lexicon.yaml").write_text(yaml.safe_dump(LEXICON, sort_keys=False))
    write(train, root / f"raw/train{suffix}")
    if validation is not None:
        write(validation, root / "raw/validation.tsv")
    return root


def failed(report) -> dict[str, str]:
    return {check.check: check.status for check in report.failures}


def test_clean_data_passes_every_check_and_writes_both_reports(tmp_path):
    report = audit_raw_data(load_config(audit_project(tmp_path, clean_rows(), clean_rows().assign(
        sentence=lambda f: "another " + f["sentence"]))))
    assert report.passed and not report.failures
    names = {check.check for check in report.checks}
    assert names == {"columns", "text_type", "not_null", "text_not_blank", "label_type", "label_in_set", "text_chars",
                     "truncated", "duplicates", "conflicting_labels", "leakage", "class_balance", "rows_per_class",
                     "representation", "positive_rate_gap"}
    summary = json.loads(report.json_path.read_text())
    assert summary["passed"] is True
    assert len(summary["files"]) == 2 and summary["files"][0]["rows"] == ROWS
    assert {c["status"] for f in summary["files"] for c in f["checks"]} == {"passed"}
    assert all({"observed", "threshold", "severity"} <= set(c) for f in summary["files"] for c in f["checks"])
    html = report.html_path.read_text()
    assert html.count('<span class="status passed">') == len(report.checks)
    assert all(f"<td>{name}</td>" in html for name in names)


def _set(row: int, column: str, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype(object)
        frame.loc[row, column] = value
        return frame
    return change


def _labels(labels: list[str]):
    return lambda frame: frame.assign(label=labels)


LONG = " ".join(["wonderful"] * 200)


@pytest.mark.parametrize("case, suffix, change, overrides, expected, message", [
    ("text type", ".jsonl", _set(3, "sentence", 12345), {}, {"text_type": "error"},
     "1 row(s) (2.5%) are not text; e.g. row 4: 12345"),
    ("null text", ".jsonl", _set(3, "sentence", None), {}, {"not_null": "error"}, "1 row(s) (2.5%) are empty"),
    ("blank text", ".tsv", _set(5, "sentence", "   "), {}, {"text_not_blank": "error"}, "row 6: '   '"),
    ("label type", ".tsv", _set(2, "label", "1.5"), {}, {"label_type": "error", "label_in_set": "error"},
     "1 row(s) (2.5%) are not integers; e.g. row 3: '1.5'"),
    ("label set", ".csv", _set(7, "label", "3"), {}, {"label_in_set": "error"},
     "are outside the label set ['0', '1']; e.g. row 8: '3'"),
    ("characters", ".tsv", _set(0, "sentence", "ab"), {}, {"text_chars": "warning"},
     "are shorter than 3 or longer than 2000 characters; e.g. row 1: 'ab'"),
    ("tokens", ".tsv", _set(0, "sentence", LONG), {}, {"truncated": "warning"},
     "have more than 128 tokens and would be truncated; e.g. row 1"),
    ("duplicates", ".tsv", _set(2, "sentence", "film 0: she found it worth a look"), {}, {"duplicates": "warning"},
     "2 row(s) (5%) share their exact text with another row"),
    ("conflicting labels", ".tsv", _set(1, "sentence", "FILM 0:  she found it worth a look"), {},
     {"conflicting_labels": "warning"}, "row 1: 'film 0: she found it worth a look' labelled 0"),
    ("class balance", ".tsv", _labels(["0" if i in (0, 2, 4, 6, 8, 10) else "1" for i in range(ROWS)]),
     {"checks.rows_per_class.min_rows": 5},
     {"class_balance": "warning"}, "smallest class: 0 (negative)"),
    ("rows per class", ".tsv", lambda f: f, {"checks.rows_per_class.min_rows": 25}, {"rows_per_class": "error"},
     "0 (negative) 20 rows, 50.0%"),
    ("representation", ".tsv", lambda f: f, {"bias.representation.min_share": 0.6}, {"representation": "warning"},
     "2 of 2 slices under 60.00% of rows; mentioned rarely: gender: women (20 rows), gender: men (20 rows)"),
    ("positive rate gap", ".tsv", _labels(["1", "1", "0", "0"] * 10), {}, {"positive_rate_gap": "warning"},
     "positive rate 1.000 vs 0.000 in the rest, gap +1.000"),
])
def test_each_failing_check_is_reported_with_its_severity(tmp_path, case, suffix, change, overrides, expected, message):
    config = load_config(audit_project(tmp_path, change(clean_rows()), suffix=suffix, overrides=overrides))
    report = audit_file(config, config.path(config.data.train))
    assert failed(report) == expected
    details = " ".join(check.detail for check in report.failures)
    assert message in details
    if "error" in expected.values():
        with pytest.raises(AuditFailed, match="Data audit failed, nothing was trained or registered") as info:
            audit_raw_data(config)
        assert f"{config.data.train}: {next(iter(expected))}" in str(info.value)
        assert message in str(info.value)
    else:
        assert audit_raw_data(config).passed


@pytest.mark.parametrize("values, message", [
    (["a", "b"], "'>=' not supported between instances of 'str' and 'float'"),   # raised by the expectation
    ([{"a": 1}, {"b": 2}], "'<=' not supported between instances of 'dict' and 'dict'"),   # raised by a metric
])
def test_an_expectation_gx_cannot_evaluate_fails_with_its_message(values, message):
    config = load_config(REPO)
    rows_per_class = class_specs(config, class_table(config, pd.Series(["0", "1"])))[1]
    (result,) = validate(batch_definition(), "table", pd.DataFrame({"rows": values}), [rows_per_class], examples=5)
    assert (result.check, result.passed, result.status, result.observed) == ("rows_per_class", False, "error", None)
    assert result.detail == f"could not be checked: {message}"


def test_validation_text_found_in_train_is_leakage(tmp_path):
    validation = clean_rows().assign(sentence=lambda f: "another " + f["sentence"])
    validation.loc[4, "sentence"] = "  Film 2: HE found it worth a look"
    report = audit_raw_data(load_config(audit_project(tmp_path, clean_rows(), validation)))
    assert failed(report) == {"leakage": "warning"}
    (leak,) = report.failures
    assert leak.source == "raw/validation.tsv" and leak.observed == pytest.approx(1 / ROWS)
    assert "1 row(s) (2.5%) also appear in the training file (ignoring case and spacing); e.g. row 5" in leak.detail


def test_severity_decides_whether_a_failure_stops_the_run(tmp_path):
    duplicated = _set(2, "sentence", "film 0: she found it worth a look")(clean_rows())
    assert audit_raw_data(load_config(audit_project(tmp_path / "warn", duplicated))).passed
    stop = audit_project(tmp_path / "stop", duplicated, overrides={"checks.duplicates.severity": "error"})
    with pytest.raises(AuditFailed, match=r"error: raw/train.tsv: duplicates \(sentence\): 2 row\(s\)"):
        audit_raw_data(load_config(stop))
    lenient = audit_project(tmp_path / "lenient", _set(7, "label", "3")(clean_rows()),
                           overrides={"checks.label_in_set.severity": "warning"})
    report = audit_raw_data(load_config(lenient))
    assert report.passed and failed(report) == {"label_in_set": "warning"}


@pytest.mark.parametrize("name, content, message", [
    ("empty.tsv", b"", "empty.tsv: the file is empty"),
    ("header.tsv", b"sentence\tlabel\n", "header.tsv: no data rows (only a header?)"),
    ("latin1.tsv", "sentence\tlabel\ngood\t1\ncaf\u00e9 cr\u00e8me\t0\n".encode("latin-1"),
     "latin1.tsv: not UTF-8 text: byte 0xe9 at line 3, column 4"),
    ("broken.jsonl", b'{"sentence": "good", "label": 1}\n{"sentence": "bad" "label": 0}\n',
     "broken.jsonl: line 2 is not valid JSON"),
    ("ragged.csv", b"sentence,label\ngood,1\nbad,0,extra\n", "ragged.csv: cannot be parsed as CSV"),
])
def test_unreadable_input_stops_the_audit_naming_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        audit_file(load_config(audit_project(tmp_path / "project", clean_rows())), path)
    assert message in str(info.value)


@pytest.mark.parametrize("drop, key", [("sentence", "text_column"), ("label", "label_column")])
def test_missing_column_stops_the_audit_naming_it_and_the_fix(tmp_path, drop, key):
    config = load_config(audit_project(tmp_path, clean_rows().drop(columns=[drop])))
    with pytest.raises(AuditFailed) as info:
        audit_raw_data(config)
    assert (f"error: raw/train.tsv: columns ({drop}): column {drop!r} is missing; the file has "
            f"{'label' if drop == 'sentence' else 'sentence'!r}. Fix data.{key} in params.yaml") in str(info.value)


def test_every_format_and_encoding_reads_the_same_table(tmp_path):
    frame = clean_rows()
    crlf_bom = tmp_path / "crlf.csv"
    crlf_bom.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False, lineterminator="\r\n").encode())
    paths = [write(frame, tmp_path / f"t{suffix}") for suffix in (".csv", ".tsv", ".parquet", ".jsonl")]
    for path in [crlf_bom, *paths]:
        read = read_table(path)
        assert list(read.columns) == ["sentence", "label"], path
        assert read["sentence"].tolist() == frame["sentence"].tolist(), path
        assert read["label"].astype(str).tolist() == frame["label"].tolist(), path


def test_bias_numbers_on_a_hand_computed_frame():
    texts = pd.Series(["She was great", "her best role", "THE OLD MAN  smiled", "he's fine", "the theme",
                       "shelter", "his film", "old   man", "a film", "another film"])
    positive = pd.Series([True, True, False, True, False, False, True, False, False, True])
    lexicon = {("gender", "women"): ["she", "her"], ("gender", "men"): ["he", "his"], ("age", "old"): ["old man"]}
    mentions = slices.find_mentions(texts, lexicon)
    # Whole words in any case: 'the', 'theme' and 'shelter' hold 'he' or 'she' but do not mention them.
    assert mentions[("gender", "women")].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert mentions[("gender", "men")].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    assert mentions[("age", "old")].tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    table = slices.slice_table(mentions, positive).set_index("group")
    # women: 2 rows, both positive; rest: 8 rows, 3 positive.
    assert table.loc["women", ["rows", "share", "positive_rate", "rest_positive_rate"]].tolist() == [2, 0.2, 1.0, 3 / 8]
    assert table.loc["women", "gap"] == pytest.approx(1 - 3 / 8)
    # men: 2 rows, both positive; rest 3 of 8. old: 2 rows, none positive; rest 5 of 8.
    assert table.loc["men", "gap"] == pytest.approx(1 - 3 / 8)
    assert table.loc["old", ["positive_rate", "rest_positive_rate"]].tolist() == [0.0, 5 / 8]


def test_slice_without_rows_has_no_rates():
    mentions = slices.find_mentions(pd.Series(["a film", "a show"]), {("religion", "sikh"): ["sikh"]})
    row = slices.slice_table(mentions, pd.Series([True, False])).iloc[0]
    assert row["rows"] == 0 and row["share"] == 0
    assert pd.isna(row["positive_rate"]) and row["rest_positive_rate"] == 0.5


def test_shipped_lexicon_covers_the_six_kinds_of_identity():
    categories = {category for category, _ in slices.load_lexicon(None)}
    assert categories == {"gender", "race or ethnicity", "religion", "age", "disability", "sexual orientation"}


def test_lexicon_from_params_replaces_the_shipped_one(tmp_path):
    config = load_config(audit_project(tmp_path, clean_rows()))
    report = audit_file(config, config.path(config.data.train))
    assert [(s.category, s.group, s.rows) for s in report.files[0].slices.itertuples()] == [
        ("gender", "women", 20), ("gender", "men", 20)]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("[she, he]", r"is not a mapping of category -> group -> \[terms\]"),
    ("gender: {women: []}", "gender -> women must be a non-empty list of terms"),
])
def test_bad_lexicon_says_what_shape_it_needs(tmp_path, content, message):
    path = tmp_path / "lexicon.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        slices.load_lexicon(path)


def test_cli_audits_one_file_prints_every_check_and_exits_by_severity(tmp_path, capsys):
    project = audit_project(tmp_path, clean_rows())
    bad = write(_set(7, "label", "3")(clean_rows()), tmp_path / "bad.csv")
    assert main(["--project-dir", str(project), "audit", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["status", "file", "check", "column", "observed", "threshold"]
    table = [line.split() for line in out.splitlines()]
    assert ["error", "bad.csv", "label_in_set", "label", "1", "0", "rows"] in table
    assert "audit failed with 1 error(s), 0 warning(s)" in out
    assert (project / "outputs/audit/audit-bad.html").is_file()
    warned = write(_set(0, "sentence", "ab")(clean_rows()), tmp_path / "warned.jsonl")
    assert main(["--project-dir", str(project), "audit", str(warned)]) == 0
    assert "warning: " in capsys.readouterr().out


def test_cli_unreadable_file_is_one_message_and_exit_1(tmp_path, capsys):
    project = audit_project(tmp_path, clean_rows())
    (tmp_path / "empty.csv").write_bytes(b"")
    assert main(["--project-dir", str(project), "audit", str(tmp_path / "empty.csv")]) == 1
    assert capsys.readouterr().err.startswith(f"tunegate: error: {tmp_path / 'empty.csv'}: the file is empty")


def test_real_sst2_slice_passes_with_its_real_issues_as_warnings(tmp_path):
    report = audit_raw_data(load_config(make_project(tmp_path, parts=("sst2",))))
    assert report.passed
    assert set(failed(report).values()) <= {"warning"}
    assert len(report.files) == 3 and [f.rows for f in report.files] == [400, 100, 200]
