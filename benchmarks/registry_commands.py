"""How long the commands that only read the registry take, each a fresh process as a user runs it:
`tunegate models`, `tunegate models --history` and `tunegate lineage MODEL_URI`.

    python benchmarks/registry_commands.py                    # a scratch project with a few versions
    python benchmarks/registry_commands.py --project-dir .    # this project's own registry (after `make run`)

Without --project-dir, a scratch project in a temp folder gets VERSIONS versions (the base model with a fresh
head, registered and promoted; no training), each a warm start from the one before, so `lineage` of the
champion follows a chain of VERSIONS records. Prints a table of seconds per command side by side with the
target (best and median of REPEATS runs, wall clock and the process's CPU time, user + system: on a machine
busy with other jobs the CPU time is what the command would take alone) and the modules each command imported
that cost most, and writes it all to benchmarks/results/registry_commands.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
RESULT = PROJECT / "benchmarks/results/registry_commands.json"
TARGET_S = 3.0    # issue 9: each command answers within 3 s
REPEATS = 5
VERSIONS = 3


def commands(model_name: str) -> dict[str, list[str]]:
    return {"tunegate models": ["models"], "tunegate models --history": ["models", "--history"],
            "tunegate lineage @champion": ["lineage", f"models:/{model_name}@champion"]}


def scratch_project(root: Path) -> Path:
    """A project whose registry holds VERSIONS versions, each with a lineage record naming the one before as its
    parent, and their alias moves."""
    import shutil

    import pipeline  # noqa: F401  (offline, quiet environment first)
    from pipeline.governance import lineage
    from pipeline.governance.registration import Candidate, register_candidate
    from pipeline.governance.store import connect
    from pipeline.config import load_config
    from pipeline.training.models import load_classifier, load_tokenizer, resolve_model_path
    from pipeline.governance.promotion import promote_candidate
    from pipeline.data.versioning import DataVersion

    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    config = load_config(root)
    base = resolve_model_path(config.model.base)
    model_dir = root / "model"
    load_classifier(base, config.data.labels).save_pretrained(model_dir)
    load_tokenizer(base).save_pretrained(model_dir)
    data_version = DataVersion("benchmark", {}, {}, {})
    parent = None
    for accuracy in [0.86 + i / 100 for i in range(VERSIONS)]:
        record = lineage.build_record(config, lineage.git_state(root), data_version, "fp32", parent, None, {})
        candidate = Candidate(model_dir=model_dir, params=config.as_dict(),
                                       metrics={"test_accuracy": accuracy}, tags={"data_version": "benchmark"},
                                       artifacts=[], lineage=record)
        version = register_candidate(connect(config), candidate)
        # one data version: the champion's logged metrics are the baseline, no test split is read
        promote_candidate(config, version, "benchmark", None, root / "reports", "benchmark")
        parent = version.uri
    return root


def slowest_imports(argv: list[str], count: int = 8) -> list[tuple[str, float]]:
    """The top-level packages with the largest cumulative import time, from `python -X importtime`."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli", *argv], cwd=PROJECT,
                            capture_output=True, text=True)
    totals: dict[str, float] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):   # nested imports are indented further
            totals[name.strip()] = int(cumulative) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:count]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", type=Path, help="a project with a registry (default: a scratch one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunegate-registry-bench-") as scratch:
        project = args.project_dir.resolve() if args.project_dir else scratch_project(Path(scratch))
        from pipeline.config import load_config

        timed = commands(load_config(project).registry.model_name)
        load_before = os.getloadavg()
        timings, imports = {}, {}
        for label, command in timed.items():
            argv = ["--project-dir", str(project), *command]
            seconds, cpu_seconds = [], []
            for _ in range(REPEATS):
                started, cpu_started = time.perf_counter(), _children_cpu_s()
                subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=PROJECT, check=True,
                               capture_output=True)
                seconds.append(time.perf_counter() - started)
                cpu_seconds.append(_children_cpu_s() - cpu_started)
            timings[label] = {"best_s": round(min(seconds), 2), "median_s": round(statistics.median(seconds), 2),
                              "best_cpu_s": round(min(cpu_seconds), 2),
                              "median_cpu_s": round(statistics.median(cpu_seconds), 2)}
            imports[label] = slowest_imports(argv)
    load_after = os.getloadavg()
    width = max(len(label) for label in timed)
    print(f"{'command':<{width}}  best_s  median_s  best_cpu_s  median_cpu_s  target_s  wall")
    for label, timing in timings.items():
        verdict = "met" if timing["median_s"] < TARGET_S else "MISSED"
        print(f"{label:<{width}}  {timing['best_s']:6.2f}  {timing['median_s']:8.2f}  {timing['best_cpu_s']:10.2f}  "
              f"{timing['median_cpu_s']:12.2f}  {TARGET_S:8.1f}  {verdict}")
    for label in timed:
        print(f"{label} slowest imports: " + ", ".join(f"{name} {s:.2f}" for name, s in imports[label]))
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({
        "project": "scratch" if args.project_dir is None else str(args.project_dir), "versions": VERSIONS,
        "repeats": REPEATS, "seconds": timings, "slowest_imports_s": imports, "target_s": TARGET_S,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(), "python": platform.python_version()}, indent=2) + "\n")
    print(f"wrote {RESULT.relative_to(PROJECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
