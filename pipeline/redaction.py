"""Credentials never leave the process: passwords in URIs and the values of secret-named environment variables are
masked in whatever tunegate writes (params, tags, reports, model cards, logs, error messages)."""
from __future__ import annotations

import logging
import os
import re
from typing import Any

from pipeline.errors import TunegateError

MASK = "***"
# `scheme://user:password@host`: the password (or token) between the colon and the @
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@", re.IGNORECASE)
# environment variables whose values are credentials, e.g. MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.IGNORECASE)
_MIN_SECRET_LENGTH = 4   # shorter values ("1", "yes") would mask ordinary text


def environment_secrets() -> list[str]:
    return sorted({value for name, value in os.environ.items()
                   if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)


def redact(text: str) -> str:
    text = _URI_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    for secret in environment_secrets():
        text = text.replace(secret, MASK)
    return text


def redact_values(value: Any) -> Any:
    """The same structure with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_values(item) for item in value)
    return value


def install_log_record_factory() -> None:
    """Every log record this process makes is masked as it is made, whichever handler then writes it: Prefect
    sets its handlers up anew in each flow-run process (a scheduled run) and Dask worker, where a filter on the
    handlers of the process that started them would not reach. A user error (TunegateError) loses its
    traceback: its message says what to fix. Installed once per process (flows/__init__)."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "masks_credentials", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info[1], TunegateError):
            record.exc_info, record.exc_text = None, None
        try:
            message = record.getMessage()
        except (TypeError, ValueError):   # arguments that do not fit the message: logging reports it on emit
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    masked_record.masks_credentials = True   # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)
