"""Each alias move as a Prefect event, `tunegate.alias.moved`, for a team's Automations to notify or deploy on.

pipeline/ moves aliases (aliases.move_alias) and knows no Prefect: it calls the listeners flows/ gives it.
"""
from __future__ import annotations

from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.settings import get_current_settings

from pipeline.governance.aliases import AliasMove, on_alias_moved

ALIAS_MOVED = "tunegate.alias.moved"


def emit_alias_moved(model: str, move: AliasMove) -> None:
    # Outside a flow run with no Prefect server configured there is nobody to tell, and the temporary local
    # server Prefect would start for the event costs seconds (e.g. `tunegate promote` on a laptop).
    if get_current_settings().api.url is None and FlowRunContext.get() is None:
        return
    # The alias and version as resource labels too: an Automation's trigger matches labels, not the payload.
    emit_event(ALIAS_MOVED,
               resource={"prefect.resource.id": f"tunegate.model.{model}", "prefect.resource.name": model,
                         "tunegate.alias": move.alias, "tunegate.version": move.to_version},
               related=[{"prefect.resource.id": f"tunegate.model.{model}.{move.to_version}",
                         "prefect.resource.role": "model-version", "prefect.resource.name": f"{model} {move.to_version}"}],
               payload={"model": model, "version": move.to_version, "alias": move.alias, "reason": move.reason,
                        "by": move.by, "action": move.action, "from_version": move.from_version})
    if FlowRunContext.get() is None:
        # A command that exits right after the move (`tunegate promote`): sent now, not by Prefect at exit,
        # which warns on stderr that it is "still processing items".
        EventsWorker.instance().wait_until_empty()


def publish_alias_moves() -> None:
    """From now on, every alias this process moves is told to Prefect."""
    on_alias_moved(emit_alias_moved)
