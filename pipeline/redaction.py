"""Credentials never leave the process: passwords in URIs and the values of secret-named environment variables are
masked in whatever tunegate writes (params, tags, reports, model cards, logs, error messages)."""
from __future__ import annotations

import logging
import os
import re
from typing import Any

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


class RedactingFilter(logging.Filter):
    """Masks credentials in a log record's message (and its arguments) before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
