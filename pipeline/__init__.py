"""tunegate's library: typed configs and plain functions; no Prefect here."""
import os

# Offline first and quiet: nothing phones home or downloads at run time. Set before the
# libraries are imported, since they read these at import; a user's own values win.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
