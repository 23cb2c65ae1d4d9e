"""tunegate's Prefect wiring: flows that call `pipeline/` functions, and the CLI."""
import os

import pipeline  # noqa: F401  (sets the offline/quiet environment before Prefect loads)
from flows.logs import log_user_errors_once
from pipeline.redaction import install_log_record_factory

# Prefect's default 20 s for its local ephemeral API is too short on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Whatever process runs a flow or a task (the CLI, a scheduled run's own process, a Dask worker) imports this package.
install_log_record_factory()
log_user_errors_once()
