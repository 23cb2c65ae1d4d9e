"""Distributed training under torchrun: two ranks with gloo on this machine's CPU, through the real flow (a rank
killed mid-run, then the re-run that resumes and registers), a second machine's ranks (`tunegate train-node`), and
launches that cannot work, stopped before any work with one line."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psutil
import pytest
from transformers import TrainerState

from flows.cli import main
from flows.retrain import retrain
from pipeline.config import load_config
from pipeline.data.split import read_split, split_paths
from pipeline.data.versioning import reproduce_splits
from pipeline.errors import EnvironmentProblem, TrainingCrashed
from pipeline.governance.store import connect
from pipeline.governance.versions import list_versions
from pipeline.training.distributed import LAUNCH_DIR, RESULT, join_training, launch_training, result_from_json
from pipeline.training.loop import TRAINER_STATE, last_checkpoint, train_model
from tests.conftest import free_port, make_project

# 192 training rows, a global batch of 32 (2 ranks of 16): 6 steps, scored and checkpointed every 3.
STEPS = 6
# No retries: the flow would resume a killed rank's run at once (train.retries), and the test would not see it stop.
TWO_RANKS = {"batch_size": 16, "eval_steps": 3, "save_steps": 3, "logging_steps": 1, "precision": "fp32", "retries": 0,
             "distributed": {"launcher": "torchrun", "nproc_per_node": 2}}
# Two ranks of 16 against one process of 32, on the same rows: the batches differ (each rank draws its share of a
# seeded order), so the losses differ by sampling noise alone, measured at under 0.005 here; a loss scaled by the
# world size (the Trainer's own, for this classifier) would be twice the other.
LOSS_TOLERANCE = 0.02


def _project(root: Path, rows: int = 192, **train) -> Path:
    return make_project(root, model={"max_length": 32}, split={"max_train_rows": rows}, gates={"min_accuracy": 0.0},
                        train={**TWO_RANKS, **train,
                               "distributed": {**TWO_RANKS["distributed"], "master_port": free_port(),
                                               **train.get("distributed", {})}})


def _ranks_of_this_process(rank: int | None = None) -> list[psutil.Process]:
    """torchrun and its ranks (or the one rank) started from this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if "torch.distributed.run" in command:     # torchrun, whose arguments name the worker too
                found += [child] if rank is None else []
            elif "pipeline.training.worker" in command and rank in (None, int(child.environ()["RANK"])):
                found.append(child)
        except psutil.Error:   # a short-lived child (git, dvc) that ended meanwhile
            pass
    return found


def _run_dir(project: Path) -> Path:
    return next((project / "outputs/train").iterdir())


def _kill_rank_at_first_checkpoint(project: Path, rank: int) -> int:
    """Wait for the run's first complete checkpoint, then SIGKILL one rank; returns the checkpoint's step."""
    deadline = time.monotonic() + 600
    while True:
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        checkpoints = list((project / "outputs/train").glob("*/checkpoints"))
        checkpoint = last_checkpoint(checkpoints[0]) if checkpoints else None
        if checkpoint is not None:
            break
        time.sleep(0.05)
    worker, = _ranks_of_this_process(rank)
    worker.send_signal(signal.SIGKILL)
    return int(checkpoint.name.rsplit("-", 1)[1])


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """One project through the flow with 2 ranks: rank 1 killed after the first checkpoint, then the re-run."""
    project = _project(tmp_path_factory.mktemp("distributed") / "project")
    with ThreadPoolExecutor(1) as killer:
        killed_at = killer.submit(_kill_rank_at_first_checkpoint, project, 1)
        with pytest.raises(TrainingCrashed) as failure:
            retrain(str(project))
        killed_at = killed_at.result()
    after_kill = {"error": str(failure.value), "killed_at": killed_at, "left": _ranks_of_this_process(),
                  "versions": list_versions(connect(load_config(project))),
                  "model": (_run_dir(project) / "model").exists()}
    summary = retrain(str(project))
    return project, after_kill, summary


def test_a_killed_rank_stops_the_flow_with_one_line_and_nothing_registered_or_left_running(killed_then_resumed):
    project, after_kill, summary = killed_then_resumed
    assert after_kill["error"].startswith("Distributed training failed: rank 1 of 2 was killed by SIGKILL")
    assert "\n" not in after_kill["error"]
    assert 0 < after_kill["killed_at"] < STEPS
    assert after_kill["left"] == [] and after_kill["versions"] == [] and not after_kill["model"]


def test_the_rerun_resumes_and_both_ranks_end_with_the_same_weights(killed_then_resumed):
    project, after_kill, summary = killed_then_resumed
    launch = _run_dir(project) / LAUNCH_DIR
    result = result_from_json(json.loads((launch / RESULT).read_text()))
    assert result.world_size == 2 and result.resumed_from is not None
    assert int(result.resumed_from.name.rsplit("-", 1)[1]) >= after_kill["killed_at"]
    reports = [json.loads((launch / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["digest"] == reports[1]["digest"] and reports[0]["step"] == reports[1]["step"] == STEPS
    # The resumed run's log, one loss per step: it went on from the checkpoint, with no step trained twice.
    state = TrainerState.load_from_json(str(_run_dir(project) / f"checkpoints/checkpoint-{STEPS}" / TRAINER_STATE))
    assert [entry["step"] for entry in state.log_history if "loss" in entry] == list(range(1, STEPS + 1))


def test_the_distributed_run_logs_one_mlflow_run_and_registers_one_version(killed_then_resumed):
    project, after_kill, summary = killed_then_resumed
    store = connect(load_config(project))
    assert [row.version for row in list_versions(store)] == ["1"] == [summary.version]
    runs = store.client.search_runs([store.experiment(load_config(project).registry.experiment)])
    assert len(runs) == 1
    assert runs[0].data.params["train.distributed.launcher"] == "torchrun"
    assert runs[0].data.params["train.distributed.nproc_per_node"] == "2"


def test_two_ranks_of_16_train_as_one_process_of_32(killed_then_resumed, tmp_path):
    project, _, _ = killed_then_resumed
    config = load_config(project, ["train.distributed.launcher=none", "train.batch_size=32"])
    paths = split_paths(config)
    alone = train_model(config, read_split(paths.train), read_split(paths.validation), tmp_path / "alone")

    def losses(run_dir: Path) -> tuple[float, float]:
        state = TrainerState.load_from_json(str(run_dir / f"checkpoints/checkpoint-{STEPS}" / TRAINER_STATE))
        train = [entry["loss"] for entry in state.log_history if "loss" in entry]
        assert len(train) == STEPS
        final = next(entry["eval_loss"] for entry in state.log_history if entry.get("step") == STEPS and "eval_loss" in entry)
        return sum(train) / len(train), final

    (two_train, two_validation), (one_train, one_validation) = losses(_run_dir(project)), losses(tmp_path / "alone")
    assert alone.world_size == 1
    assert abs(two_train - one_train) < LOSS_TOLERANCE, (two_train, one_train)
    assert abs(two_validation - one_validation) < LOSS_TOLERANCE, (two_validation, one_validation)


def test_a_second_machine_joins_with_train_node(tmp_path, capsys, monkeypatch):
    """Two nodes of one rank each, on this machine: node 0's ranks as the flow starts them, node 1 by the CLI."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # each node would give its one rank every core of the machine
    # 64 rows: 2 steps, scored and checkpointed at the end
    project = _project(tmp_path / "project", rows=64, eval_steps=2, save_steps=2,
                       distributed={"nproc_per_node": 1, "nnodes": 2})
    config = load_config(project)
    reproduce_splits(project)
    paths = split_paths(config)
    with ThreadPoolExecutor(1) as node0:
        first = node0.submit(launch_training, config, read_split(paths.train), read_split(paths.validation),
                             tmp_path / "node0")
        assert main(["--project-dir", str(project), "train-node", "-S", "train.distributed.node_rank=1"]) == 0
        result = first.result()
    assert "node 1 of 2: 1 ranks trained on data version" in capsys.readouterr().out
    assert result.world_size == 2 and (tmp_path / "node0/model").is_dir()
    node1 = _run_dir(project)
    # node 1 keeps checkpoints of its own (to resume from its disk), but the model and the result are node 0's
    assert last_checkpoint(node1 / "checkpoints") is not None
    assert not (node1 / "model").exists() and not (node1 / LAUNCH_DIR / RESULT).exists()
    digests = [json.loads((folder / LAUNCH_DIR / f"rank-{rank}.json").read_text())["digest"]
               for folder, rank in ((tmp_path / "node0", 0), (node1, 1))]
    assert digests[0] == digests[1]


@pytest.fixture(scope="module")
def idle_project(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("bad-launch") / "project")


@pytest.fixture
def busy_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("overrides, message", [
    ([f"train.distributed.nproc_per_node={len(os.sched_getaffinity(0)) + 1}"],
     f"but this machine has {len(os.sched_getaffinity(0))} CPU cores (no GPU): one rank per device at most"),
    (["train.distributed.master_addr=no-such-host.invalid"],
     "train.distributed.master_addr no-such-host.invalid:{port} does not resolve"),
    (["train.distributed.master_addr=192.0.2.1"], "is not an address of this machine"),
    (["train.distributed.master_port={busy}"], "port {busy} is in use on this machine"),
    (["train.distributed.node_rank=1", "train.distributed.nnodes=2"], "run it there with node_rank 0"),
    (["train.distributed.node_rank=2"], "node_rank must be below nnodes (1)"),
])
def test_a_launch_that_cannot_work_stops_before_any_work_with_one_line(idle_project, busy_port, capsys, overrides,
                                                                        message):
    overrides = [override.format(busy=busy_port) for override in overrides]
    port = load_config(idle_project).train.distributed.master_port
    args = [part for override in overrides for part in ("-S", override)]
    assert main(["--project-dir", str(idle_project), "retrain", *args]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("tunegate: error:")
    assert message.format(port=port, busy=busy_port) in error[0]
    assert not (idle_project / "dvc.lock").exists() and not list(idle_project.glob("outputs/train/*"))
    assert list_versions(connect(load_config(idle_project))) == [] and _ranks_of_this_process() == []


def test_a_node_that_cannot_reach_node_0_gives_up_after_the_rendezvous_timeout(idle_project):
    config = load_config(idle_project, ["train.distributed.nnodes=2", "train.distributed.node_rank=1",
                                        f"train.distributed.master_port={free_port()}",
                                        "train.distributed.rendezvous_timeout_s=1"])
    started = time.monotonic()
    with pytest.raises(EnvironmentProblem, match=r"cannot be reached from this node within 1 s") as info:
        join_training(config, pd.DataFrame(), pd.DataFrame(), idle_project / "node1")
    assert time.monotonic() - started < 10 and "\n" not in str(info.value)
    assert not (idle_project / "node1").exists()
