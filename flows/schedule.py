"""`tunegate schedule`: the continual flow served as a Prefect deployment with a schedule (flow.serve).

Runs appear in the Prefect UI (`prefect server start`, PREFECT_API_URL) under the deployment `continual/weekly`;
prefect.yaml deploys the same flow to a work pool instead.
"""
from __future__ import annotations

from pathlib import Path

from flows.continual import continual_flow

DEPLOYMENT = "weekly"


def serve(project_dir: Path, cron: str | None, interval: float | None, overrides: list[str]) -> None:
    """Block, starting a continual step on every tick of the schedule, until interrupted.

    One run at a time (limit=1): a step still training when the next tick comes delays it rather than taking
    the same batch twice.
    """
    continual_flow.serve(name=DEPLOYMENT, cron=cron, interval=interval, limit=1,
                         parameters={"project_dir": str(project_dir), "overrides": overrides})
