"""Promotion gates: a pure decision from the candidate's metrics, the champion's, and params.yaml."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable

from pipeline.config import GatesConfig

# The task metric of each kind of data -> the gates section's floor for it, its gates' name and its name in words:
# the accuracy of labels (a table), the ROUGE-L of free-form responses (data.format instructions). A run has one.
TASK_METRICS = {"test_accuracy": ("min_accuracy", "accuracy", "accuracy"),
                "test_rouge_l": ("min_rouge_l", "rouge_l", "ROUGE-L")}
# Names pipeline.evaluation.suites gives: forgetting_<benchmark> and <corpus>_<attribute>_gap.
FORGETTING_PREFIX = "forgetting_"
BIAS_GAP_SUFFIX = "_gap"
# The candidate's run logs the champion's numbers it was compared with under this prefix.
CHAMPION_PREFIX = "champion_"
# A continual step's earlier tasks: earlier_<task>_accuracy on each task's test split, candidate and champion alike;
# task_forgetting_<task> = the champion's minus the candidate's.
EARLIER_TASK = re.compile(r"^earlier_(?P<task>.+)_accuracy$")
TASK_FORGETTING_PREFIX = "task_forgetting_"


def task_metric(metrics: Iterable[str]) -> str:
    """The task metric among these metric names: what the floor and the champion comparison read."""
    names = set(metrics)
    found = [name for name in TASK_METRICS if name in names]
    if not found:
        raise KeyError(f"no task metric ({' or '.join(TASK_METRICS)}) among the evaluation's metrics")
    return found[0]


def logged_by_promotion(name: str) -> bool:
    """What a promotion logs to a candidate's run beside its own metrics: the champion's, and forgetting."""
    return name.startswith((CHAMPION_PREFIX, TASK_FORGETTING_PREFIX))


def candidate_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A candidate run's own metrics, without what a promotion logged beside them."""
    return {name: value for name, value in metrics.items() if not logged_by_promotion(name)}


def gated_metrics(names: Iterable[str]) -> list[str]:
    """Of these metric names, those a gate reads: the task metric, then forgetting, then bias gaps. A version's own:
    the champion's numbers a promotion logged beside them (champion_eec_gender_gap) are not gated again."""
    names = sorted(name for name in set(names) if not logged_by_promotion(name))
    task = [name for name in TASK_METRICS if name in names]
    return (task + [n for n in names if n.startswith(FORGETTING_PREFIX)]
            + [n for n in names if n.endswith(BIAS_GAP_SUFFIX)])


@dataclass(frozen=True)
class Gate:
    name: str                 # what is checked: accuracy_floor (rouge_l_floor), accuracy_vs_champion, a forgetting
                              # or gap metric
    value: float | None       # the candidate's number; None where nothing was measured
    threshold: float | None   # the number the value was held against; None where not gated
    baseline: float | None    # the champion's number for the same metric, measured on the candidate's data
    passed: bool | None       # None where nothing was checked
    reason: str               # the outcome, in words


@dataclass(frozen=True)
class Decision:
    promote: bool
    gates: list[Gate]

    @property
    def reasons(self) -> list[str]:
        return [gate.reason for gate in self.gates]

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)

    def as_record(self) -> dict[str, Any]:
        """What decision.json holds: every gate with its numbers, and the verdict."""
        return {"verdict": "promote" if self.promote else "reject",
                "gates": [dataclasses.asdict(gate) for gate in self.gates]}


def _task_gates(candidate: dict[str, float], champion: dict[str, float] | None, gates: GatesConfig) -> list[Gate]:
    metric = task_metric(candidate)
    key, name, words = TASK_METRICS[metric]
    value, minimum = candidate[metric], getattr(gates, key)
    baseline = champion.get(metric) if champion else None
    ok = value >= minimum
    floor = Gate(f"{name}_floor", value, minimum, baseline, ok,
                 f"{words} {value:.4f} {'≥' if ok else '<'} floor {minimum:.4f}")
    if baseline is None:
        return [floor, Gate(f"{name}_vs_champion", value, None, None, None, "no current champion")]
    threshold = baseline - gates.champion_tolerance
    ok = value >= threshold
    tolerance = f" − tolerance {gates.champion_tolerance}" if gates.champion_tolerance else ""
    return [floor, Gate(f"{name}_vs_champion", value, threshold, baseline, ok,
                        f"{words} {value:.4f} {'≥' if ok else '<'} champion's {baseline:.4f}{tolerance}")]


def _at_most(candidate: dict[str, float], champion: dict[str, float] | None, names: list[str],
             limit: float | None, what: str, key: str) -> list[Gate]:
    """One gate per metric, value ≤ limit; a null limit or no such metric is said, not failed."""
    if limit is None:
        return [Gate(what.replace(" ", "_"), None, None, None, None, f"{what} not gated ({key} is null)")]
    if not names:
        return [Gate(what.replace(" ", "_"), None, limit, None, None, f"{what} not measured")]
    outcomes: list[Gate] = []
    for name in names:
        ok = candidate[name] <= limit
        outcomes.append(Gate(name, candidate[name], limit, (champion or {}).get(name), ok,
                             f"{name.replace('_', ' ')} {candidate[name]:.4f} {'≤' if ok else '>'} max {limit:.4f}"))
    return outcomes


def _task_forgetting(candidate: dict[str, float], champion: dict[str, float] | None, limit: float | None) -> list[Gate]:
    """One gate per earlier task both were scored on: the drop against the champion on the same test split."""
    names = sorted(name for name in candidate if EARLIER_TASK.match(name) and name in (champion or {}))
    if not names:
        return []
    if limit is None:
        return [Gate("task_forgetting", None, None, None, None,
                     "forgetting of earlier tasks not gated (gates.max_task_forgetting is null)")]
    outcomes = []
    for name in names:
        task, value = EARLIER_TASK.match(name)["task"], champion[name] - candidate[name]
        ok = value <= limit
        outcomes.append(Gate(f"{TASK_FORGETTING_PREFIX}{task}", value, limit, champion[name], ok,
                             f"forgetting of {task} {value:.4f} {'≤' if ok else '>'} max {limit:.4f}"))
    return outcomes


def decide(candidate: dict[str, float], champion: dict[str, float] | None, gates: GatesConfig) -> Decision:
    """champion: the champion's metrics measured on the candidate's data version (None: no champion)."""
    gated = gated_metrics(candidate)
    outcomes = [
        *_task_gates(candidate, champion, gates),
        *_at_most(candidate, champion, [n for n in gated if n.startswith(FORGETTING_PREFIX)], gates.max_forgetting,
                  "forgetting", "gates.max_forgetting"),
        *_at_most(candidate, champion, [n for n in gated if n.endswith(BIAS_GAP_SUFFIX)], gates.max_bias_gap,
                  "bias gap", "gates.max_bias_gap"),
        *_task_forgetting(candidate, champion, gates.max_task_forgetting),
    ]
    return Decision(promote=all(gate.passed for gate in outcomes if gate.passed is not None), gates=outcomes)
