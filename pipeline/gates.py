"""Promotion gates: a pure decision from the candidate's metrics, the champion's, and params.yaml."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import GatesConfig

TASK_METRIC = "test_accuracy"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]   # every gate's outcome, in words

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def decide(candidate: dict[str, float], champion: dict[str, float] | None, gates: GatesConfig) -> Decision:
    accuracy = candidate[TASK_METRIC]
    passed: list[bool] = []
    reasons: list[str] = []

    ok = accuracy >= gates.min_accuracy
    passed.append(ok)
    reasons.append(f"accuracy {accuracy:.4f} {'≥' if ok else '<'} floor {gates.min_accuracy:.4f}")

    if champion is None or TASK_METRIC not in champion:
        reasons.append("no current champion")
    else:
        bar = champion[TASK_METRIC] - gates.champion_tolerance
        ok = accuracy >= bar
        passed.append(ok)
        reasons.append(f"accuracy {accuracy:.4f} {'≥' if ok else '<'} champion's {champion[TASK_METRIC]:.4f}"
                       + (f" − tolerance {gates.champion_tolerance}" if gates.champion_tolerance else ""))
    return Decision(promote=all(passed), reasons=reasons)
