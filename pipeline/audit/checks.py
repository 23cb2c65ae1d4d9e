"""Data audit: the tables a file is checked on, and the run of its checks with Great Expectations.

Each check in params.yaml (`audit.checks`, `audit.bias`) is one built-in expectation, run on one of three
tables per file: its rows (with columns that pandas and the tokenizer derive: token counts, labels per
text, presence in the training file), its classes, and its identity slices. A failed `error` check stops
the run; a failed `warning` is reported and the run goes on. Instructions (data.format instructions) have
rows only: their prompts and responses, blank, too long once rendered, duplicated or leaked. The expectations
themselves are built in pipeline.audit.expectations.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
import pandas as pd
from great_expectations.core import ExpectationValidationResult
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.validator.exception_info import ExceptionInfo

from pipeline.audit import slices
from pipeline.audit.expectations import (IN_POOL, IN_TRAIN, LABELS_PER_TEXT, PROMPT, TOKENS, Spec, class_specs,
                                         column_specs, content_specs, instruction_specs, slice_specs)
from pipeline.audit.report import AuditReport, CheckResult, FileAudit, write_report
from pipeline.config import Config
from pipeline.data.readers import MESSAGES, RESPONSE, read_instructions, read_table
from pipeline.errors import AuditFailed
from pipeline.training.models import PreTrainedTokenizerBase, base_model_dir, load_tokenizer
from pipeline.tasks import causal_lm, task_type

# The normalised text the audit derives to find conflicting labels and leaked texts.
NORMALISED = "normalised_text"
EXAMPLES = 5   # rows quoted per failed row-level check


@dataclass(frozen=True)
class Tools:
    """What every file's audit needs, loaded once per audit."""
    batches: BatchDefinition
    tokenizer: PreTrainedTokenizerBase
    lexicon: slices.Lexicon


def normalise(texts: pd.Series) -> pd.Series:
    """Case and runs of whitespace folded, so ' A  film' and 'a film' are one text for conflicts and leakage.

    Blank texts become missing: they are the not_null and text_not_blank checks' concern, not conflicts or leaks.
    """
    # ASCII whitespace spelled out: pandas runs \s with Python's re, RE2 runs this five times faster.
    folded = texts.str.lower().str.replace(r"[ \t\n\r\f\v]+", " ", regex=True).str.strip()
    return folded.mask(folded == "")


def text_values(frame: pd.DataFrame, column: str) -> pd.Series:
    """The text column as strings, a missing text as '' (the not_null check reports it)."""
    return frame[column].fillna("").astype(str)


def has_text_and_label(config: Config, frame: pd.DataFrame) -> bool:
    return config.data.text_column in frame.columns and config.data.label_column in frame.columns


def row_table(config: Config, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """The text and label columns, labels as text (1, '1' and ' 1' are label 1), and the derived columns."""
    text, label = config.data.text_column, config.data.label_column
    table = frame[[c for c in (text, label) if c in frame.columns]].reset_index(drop=True)
    if not has_text_and_label(config, table):
        return table
    table[label] = table[label].map(str, na_action="ignore").str.strip()
    texts = text_values(table, text)
    table[NORMALISED] = normalise(texts)
    # as the task type trains on them: the text alone, or the chat prompt made of it with the answer
    table[TOKENS] = task_type(config).token_counts(config, tokenizer, texts.tolist())
    table[LABELS_PER_TEXT] = table[label].groupby(table[NORMALISED]).transform("nunique")
    return table


def instruction_table(config: Config, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """Instructions' prompts and responses as text, with the derived columns."""
    table = pd.DataFrame({PROMPT: ["\n".join(turn["content"] for turn in turns if turn["role"] != "system")
                                   for turns in frame[MESSAGES]],
                          RESPONSE: frame[RESPONSE].to_numpy()})
    table[NORMALISED] = normalise(table[PROMPT])
    # as training renders them: the conversation in the chat template, then the response
    table[TOKENS] = causal_lm.instruction_token_counts(config, tokenizer, frame)
    return table


def is_in(table: pd.DataFrame, texts: set[str]) -> pd.Series:
    """Is each row's normalised text one of these?"""
    # As objects: pandas' hash table takes milliseconds, its Arrow-string isin a second per 67k texts.
    return table[NORMALISED].astype(object).isin(texts)


def mark_leaks(tables: dict[str, pd.DataFrame], train: str) -> None:
    """Add IN_TRAIN to every table but train's: is the row's normalised text one of train's?"""
    train_texts = set(tables[train][NORMALISED].dropna())
    for source, table in tables.items():
        if source != train and NORMALISED in table:
            table[IN_TRAIN] = is_in(table, train_texts)


def class_table(config: Config, labels: pd.Series) -> pd.DataFrame:
    """Rows and share of each configured label, zero for a label that never occurs."""
    names = {str(value): name for value, name in config.data.labels.items()}
    rows = labels.value_counts().reindex(list(names), fill_value=0)
    return pd.DataFrame({"label": list(names), "name": list(names.values()), "rows": rows.to_numpy(),
                         "share": rows.to_numpy() / len(labels)})


def batch_definition() -> BatchDefinition:
    """An in-memory GX context (no files written) with one pandas asset whose batches are whole data frames."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return (context.data_sources.add_pandas("tunegate").add_dataframe_asset("table")
            .add_batch_definition_whole_dataframe("whole table"))


def validate(batches: BatchDefinition, source: str, table: pd.DataFrame, specs: list[Spec],
             examples: int) -> list[CheckResult]:
    """All specs in one validation of the table; `examples` unexpected values are kept per expectation."""
    suite = gx.ExpectationSuite(name=source)
    for i, spec in enumerate(specs):
        spec.expectation.meta = {"spec": i}     # GX returns results in its own order
        suite.add_expectation(spec.expectation)
    validation = batches.get_batch(batch_parameters={"dataframe": table}).validate(
        suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": examples})
    by_spec = {result.expectation_config.meta["spec"]: result for result in validation.results}
    return [_check_result(source, spec, by_spec[i]) for i, spec in enumerate(specs)]


def _gx_error(result: ExpectationValidationResult) -> str | None:
    """GX's message when it could not evaluate an expectation; exception_info comes in two shapes."""
    info = result.exception_info or {}
    messages = ([info.get("exception_message")] if info.get("raised_exception") else
                [value.exception_message for value in info.values() if isinstance(value, ExceptionInfo)])
    return "; ".join(map(str, messages)) or None


def _check_result(source: str, spec: Spec, result: ExpectationValidationResult) -> CheckResult:
    error = _gx_error(result)
    observed = None if error else spec.observe(result.result)
    detail = f"could not be checked: {error}" if error else spec.describe(result.result)
    return CheckResult(source, spec.name, spec.column, result.expectation_config.type, spec.check.severity,
                       bool(result.success), observed, spec.threshold, detail)


def audit_table(config: Config, tools: Tools, source: str, frame: pd.DataFrame, table: pd.DataFrame) -> FileAudit:
    """Schema checks of a file's row table; with both columns present, content, class and slice checks too.
    Instructions (their schema checked as they were read): the instruction checks."""
    if config.data.format == "instructions":
        return FileAudit(source, len(frame), validate(tools.batches, source, table, instruction_specs(config, table),
                                                      EXAMPLES), None, None)
    specs = column_specs(config, table, list(frame.columns))
    if not has_text_and_label(config, table):
        return FileAudit(source, len(frame), validate(tools.batches, source, table, specs, EXAMPLES), None, None)
    checks = validate(tools.batches, source, table, specs + content_specs(config, table), EXAMPLES)
    labels, texts = table[config.data.label_column], text_values(table, config.data.text_column)
    classes = class_table(config, labels)
    positive = labels == str(config.audit.bias.positive_label)
    slice_rows = slices.slice_table(slices.find_mentions(texts, tools.lexicon), positive)
    checks += validate(tools.batches, source, classes, class_specs(config, classes), len(classes))
    checks += validate(tools.batches, source, slice_rows, slice_specs(config, slice_rows), len(slice_rows))
    return FileAudit(source, len(frame), checks, classes, slice_rows)


def audit_files(config: Config, sources: list[str], train: str | None, name: str,
                pool: set[str] | None = None) -> AuditReport:
    """Audit each file (paths relative to the project folder, or absolute) and write `<name>.json` and `.html`.

    With `train`, the other files are also checked for texts that appear in it (leakage). With `pool` (texts
    normalised as `normalise` does), every file is checked for texts already in it (pool leakage).
    """
    instructions = config.data.format == "instructions"
    frames = {source: (read_instructions if instructions else read_table)(config.path(source)) for source in sources}
    lexicon = config.audit.bias.lexicon
    tools = Tools(batch_definition(), load_tokenizer(base_model_dir(config)),
                  slices.load_lexicon(config.path(lexicon) if lexicon else None))
    tables = {source: (instruction_table if instructions else row_table)(config, frame, tools.tokenizer)
              for source, frame in frames.items()}
    if train is not None and NORMALISED in tables[train]:
        mark_leaks(tables, train)
    for table in tables.values():
        if pool is not None and NORMALISED in table:
            table[IN_POOL] = is_in(table, pool)
    files = [audit_table(config, tools, source, frames[source], tables[source]) for source in sources]
    return write_report(files, config.path(config.audit.report_dir), name)


def audit_file(config: Config, path: Path) -> AuditReport:
    """Audit one file alone with params.yaml's columns, labels and checks (no leakage check: no train file)."""
    return audit_files(config, [str(path)], None, f"audit-{path.stem}")


def audit_raw_data(config: Config) -> AuditReport:
    """Audit every raw file in params.yaml; raise AuditFailed naming each failed error-level check."""
    data = config.data
    sources = [path for path in (data.train, data.validation, data.test) if path is not None]
    report = audit_files(config, sources, data.train, "audit")
    if not report.passed:
        errors = "\n".join(f"  {check}" for check in report.errors)
        raise AuditFailed(f"Data audit failed, nothing was trained or registered ({report.summary}):\n{errors}\n"
                          f"Full report: {report.html_path}")
    return report
