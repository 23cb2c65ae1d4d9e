"""tunegate's library, a subpackage per step of a run: config, data (reading, the DVC split, batches, drift),
audit, training, evaluation, tasks (what differs per task.type) and governance (the MLflow store, registration,
promotion, lineage). Typed configs and plain functions; no Prefect here."""
import os
import sys
import warnings

# Offline first and quiet: nothing phones home or downloads at run time. Set before the
# libraries are imported, since they read these at import; a user's own values win.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",   # a command's output is its answer, not download bars
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",   # nor a tracking server's link to each run it ends
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    # Idle OpenMP (torch CPU) threads sleep rather than spin: on cores shared with other jobs, spinning
    # threads take the time the working ones need (a small training ran 4-5x slower with spinning, at a
    # load of 3-4 on 2 cores). Read when torch loads: import pipeline first.
    "OMP_WAIT_POLICY": "PASSIVE",
}.items():
    os.environ.setdefault(_name, _value)

# Progress bars only on a terminal: in a log file their carriage returns make one unreadable line. The
# Trainer logs each logging_steps' loss instead (training.training_arguments); every tqdm reads this.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_DISABLE", "1")

# peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` on each model it wraps: a FutureWarning
# in every adapter run's log that no user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
