"""A user's error, once in a run's log.

Prefect logs a task's failure, the task's final state, the flow's exception and the flow's final state, and a
parent flow both again: one wrong model path, six times. For a project error (a message that says what to fix; the
record factory of pipeline/redaction.py drops its traceback) the first record stays: the task's failure, or the
flow's exception where no task failed. The final states that name it go, and so do later records of the same error
(a parent flow re-raises a copy of the exception: known by its class and message). A bug, any other exception,
keeps every record and its traceback. A run is a process (the CLI, a scheduled run's own process): an error is
logged once a process.
"""
from __future__ import annotations

import logging
import re

from pipeline.errors import TunegateError

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")
# Prefect's records of a failure, with the exception's repr: the task's, then each flow's
FAILURE_RECORDS = ("Task run failed with exception: ", "Encountered exception during execution: ")
FINAL_STATE = "Finished in state Failed("


def _user_errors() -> list[str]:
    """The names of TunegateError and its subclasses."""
    found, todo = [], [TunegateError]
    while todo:
        error = todo.pop()
        found.append(error.__name__)
        todo += error.__subclasses__()
    return found


class UserErrorOnce(logging.Filter):
    def __init__(self):
        super().__init__()
        self.logged: set[str] = set()   # the repr of each user error logged

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith((*FAILURE_RECORDS, FINAL_STATE)):
            return True
        names = "|".join(_user_errors())
        if message.startswith(FINAL_STATE):
            return not re.search(rf"\b(?:{names}): ", message)
        error = re.search(rf"\b(?:{names})\(.*\)", message)
        if error is None:
            return True
        if error.group(0) in self.logged:
            return False
        self.logged.add(error.group(0))
        return True


def log_user_errors_once() -> None:
    once = UserErrorOnce()   # one for both loggers: a task's error is logged by the task, then by each flow
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, UserErrorOnce) for existing in logger.filters):
            logger.addFilter(once)
