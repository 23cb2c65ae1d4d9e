"""Promotion gates: a pure decision from the candidate's metrics, the champion's, and params.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pipeline.config import GatesConfig

TASK_METRIC = "test_accuracy"
# Names pipeline.evaluation gives: forgetting_<benchmark> and <corpus>_<attribute>_gap.
FORGETTING_PREFIX = "forgetting_"
BIAS_GAP_SUFFIX = "_gap"

Outcome = tuple[bool | None, str]   # (passed, or None where nothing was checked; in words)


def gated_metrics(names: Iterable[str]) -> list[str]:
    """Of these metric names, those a gate reads: the task metric, then forgetting, then bias gaps."""
    names = sorted(set(names))
    task = [TASK_METRIC] if TASK_METRIC in names else []
    return (task + [n for n in names if n.startswith(FORGETTING_PREFIX)]
            + [n for n in names if n.endswith(BIAS_GAP_SUFFIX)])


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]   # every gate's outcome, in words

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def _task_gates(accuracy: float, champion: dict[str, float] | None, gates: GatesConfig) -> list[Outcome]:
    ok = accuracy >= gates.min_accuracy
    outcomes: list[Outcome] = [(ok, f"accuracy {accuracy:.4f} {'≥' if ok else '<'} floor {gates.min_accuracy:.4f}")]
    if champion is None or TASK_METRIC not in champion:
        return outcomes + [(None, "no current champion")]
    ok = accuracy >= champion[TASK_METRIC] - gates.champion_tolerance
    return outcomes + [(ok, f"accuracy {accuracy:.4f} {'≥' if ok else '<'} champion's {champion[TASK_METRIC]:.4f}"
                            + (f" − tolerance {gates.champion_tolerance}" if gates.champion_tolerance else ""))]


def _at_most(candidate: dict[str, float], names: list[str], limit: float | None, what: str,
             key: str) -> list[Outcome]:
    """One gate per metric, value ≤ limit; a null limit or no such metric is said, not failed."""
    if limit is None:
        return [(None, f"{what} not gated ({key} is null)")]
    if not names:
        return [(None, f"{what} not measured")]
    outcomes: list[Outcome] = []
    for name in names:
        ok = candidate[name] <= limit
        outcomes.append((ok, f"{name.replace('_', ' ')} {candidate[name]:.4f} {'≤' if ok else '>'} max {limit:.4f}"))
    return outcomes


def decide(candidate: dict[str, float], champion: dict[str, float] | None, gates: GatesConfig) -> Decision:
    gated = gated_metrics(candidate)
    outcomes = [
        *_task_gates(candidate[TASK_METRIC], champion, gates),
        *_at_most(candidate, [n for n in gated if n.startswith(FORGETTING_PREFIX)], gates.max_forgetting,
                  "forgetting", "gates.max_forgetting"),
        *_at_most(candidate, [n for n in gated if n.endswith(BIAS_GAP_SUFFIX)], gates.max_bias_gap,
                  "bias gap", "gates.max_bias_gap"),
    ]
    return Decision(promote=all(ok for ok, _ in outcomes if ok is not None), reasons=[r for _, r in outcomes])
