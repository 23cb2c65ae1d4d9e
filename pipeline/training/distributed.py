"""Training on several processes and machines: the training loop, launched under torchrun.

As LLaMA-Factory and Axolotl do, tunegate writes no process-group code of its own: `torchrun` starts
nproc_per_node ranks of pipeline.training.worker on this node and meets the other nodes at master_addr:master_port;
each rank runs train_model, and the transformers Trainer (Accelerate) does DDP or FSDP over gloo (CPUs) or NCCL
(GPUs). Here: check what can be checked before launching (devices, address, port), launch, wait, and turn a failure
into one line that names its cause, with every process of the run gone.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd
import psutil
import torch

from pipeline import errors, interruption
from pipeline.config import Config, DistributedConfig
from pipeline.errors import ConfigError, EnvironmentProblem, ModelError, TrainingCrashed
from pipeline.processes import die_with_parent
from pipeline.training.loop import CHECKPOINTS, TrainResult, stop_if_interrupted, train_model

LAUNCH_DIR = "launch"          # under the run's output_dir: the spec, the frames, what each rank reports
SPEC, RESULT = "spec.json", "result.json"
RANK_REPORT = "rank-{rank}.json"   # a rank that finished: its step and the digest of its weights
RANK_ERROR = "error-{rank}.json"   # a rank stopped by a project error: its class and message
STOP_GRACE_S = 15              # torchrun, asked to stop, stops its ranks; after this, what is left is killed
OUTPUT_LINES = 400             # torchrun's last lines, kept to find the cause of a failure
# torchrun's failure summary (torch.distributed.elastic.multiprocessing.errors): the first rank that failed
ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def launch_training(config: Config, train_frame: pd.DataFrame, validation_frame: pd.DataFrame,
                    output_dir: Path) -> TrainResult:
    """train_model, in this process (train.distributed.launcher none) or under torchrun with this machine as node 0
    (the model and its result as train_model leaves them, written by rank 0)."""
    if config.train.distributed.launcher == "none":
        return train_model(config, train_frame, validation_frame, output_dir)
    check_launch(config.train.distributed)
    return run_torchrun(config, train_frame, validation_frame, output_dir)


def join_training(config: Config, train_frame: pd.DataFrame, validation_frame: pd.DataFrame,
                  output_dir: Path) -> None:
    """Another machine's share of a multi-node run (`tunegate train-node`): its ranks, once node 0 listens."""
    spread = config.train.distributed
    if spread.launcher == "none" or spread.node_rank == 0:
        raise ConfigError("tunegate train-node runs the ranks of another machine of a distributed run: set "
                          "train.distributed.launcher torchrun and this machine's node_rank (1 or more); node 0 runs "
                          "the flow (`tunegate retrain`).")
    check_devices(spread)
    check_rendezvous(spread)
    run_torchrun(config, train_frame, validation_frame, output_dir)


def check_launch(spread: DistributedConfig) -> None:
    """What node 0 can check before any work (preflight runs it): its node_rank, its devices, the rendezvous."""
    if spread.node_rank != 0:
        raise ConfigError(f"train.distributed.node_rank is {spread.node_rank}, but the flow trains, registers and "
                          f"promotes on node 0: run it there with node_rank 0, and `tunegate train-node -S "
                          f"train.distributed.node_rank={spread.node_rank}` here.")
    check_devices(spread)
    check_rendezvous(spread)


def run_torchrun(config: Config, train_frame: pd.DataFrame, validation_frame: pd.DataFrame,
                 output_dir: Path) -> TrainResult | None:
    """This node's share of a distributed run: its nproc_per_node ranks, until every rank of every node is done.
    Node 0 returns the run's result, another node None."""
    spread = config.train.distributed
    launch_dir = output_dir / LAUNCH_DIR
    launch_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*launch_dir.glob("rank-*.json"), *launch_dir.glob("error-*.json"), launch_dir / RESULT]:
        stale.unlink(missing_ok=True)
    train_frame.to_parquet(launch_dir / "train.parquet")
    validation_frame.to_parquet(launch_dir / "validation.parquet")
    (launch_dir / SPEC).write_text(json.dumps({"config": config.model_dump_json(),
                                               "project_dir": str(config.project_dir.resolve()),
                                               "output_dir": str(output_dir.resolve())}))
    returncode, output = _run_until_done(torchrun_command(spread, launch_dir / SPEC), spread)
    stop_if_interrupted(output_dir / CHECKPOINTS)   # the ranks were stopped: a run started again resumes
    if returncode != 0:
        raise _failure(spread, launch_dir, returncode, output)
    _check_ranks_agree(spread, launch_dir)
    if spread.node_rank != 0:
        return None
    return result_from_json(json.loads((launch_dir / RESULT).read_text()))


def torchrun_command(spread: DistributedConfig, spec: Path) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`: this interpreter, this environment) with a static rendezvous
    at master_addr:master_port; a failed rank fails the run (no restarts: the flow's retries, or a re-run, resume it)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={spread.nproc_per_node}",
            f"--nnodes={spread.nnodes}", f"--node-rank={spread.node_rank}", f"--master-addr={spread.master_addr}",
            f"--master-port={spread.master_port}", f"--rdzv-conf=timeout={int(spread.rendezvous_timeout_s)}",
            "--max-restarts=0", "-m", "pipeline.training.worker", str(spec)]


def devices() -> tuple[int, str]:
    """How many ranks this machine can run, and of what: one per GPU, else one per CPU core."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA GPUs"
    return len(os.sched_getaffinity(0)), "CPU cores (no GPU)"


def check_devices(spread: DistributedConfig) -> None:
    count, kind = devices()
    if spread.nproc_per_node > count:
        raise ConfigError(f"train.distributed.nproc_per_node is {spread.nproc_per_node}, but this machine has {count} "
                          f"{kind}: one rank per device at most; set -S train.distributed.nproc_per_node={count}.")
    if spread.strategy == "fsdp" and not torch.cuda.is_available():
        raise ConfigError("train.distributed.strategy fsdp shards the model across GPUs, and this machine has none: "
                          "use strategy ddp on CPUs.")


def check_rendezvous(spread: DistributedConfig) -> None:
    """Node 0 hosts the rendezvous: master_addr must be its own address and master_port free. Every other node
    waits up to rendezvous_timeout_s for node 0 to listen there."""
    where = f"train.distributed.master_addr {spread.master_addr}:{spread.master_port}"
    try:
        address = socket.getaddrinfo(spread.master_addr, spread.master_port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise EnvironmentProblem(f"{where} does not resolve ({exc.strerror}): set node 0's address, reachable from "
                                 f"every node.") from exc
    if spread.node_rank == 0:
        with socket.socket(address[0], socket.SOCK_STREAM) as probe:
            try:
                probe.bind(address[4])
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise EnvironmentProblem(f"{where}: port {spread.master_port} is in use on this machine; set a "
                                             f"free one with -S train.distributed.master_port=PORT.") from exc
                raise EnvironmentProblem(f"{where} is not an address of this machine ({exc.strerror}), and node 0 "
                                         f"(node_rank 0) hosts the rendezvous there: set its own address.") from exc
        return
    deadline = time.monotonic() + spread.rendezvous_timeout_s
    while True:
        try:
            socket.create_connection(address[4], timeout=min(5.0, spread.rendezvous_timeout_s)).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise EnvironmentProblem(f"{where} cannot be reached from this node within "
                                         f"{spread.rendezvous_timeout_s:g} s ({exc.strerror or exc}): start node 0 "
                                         f"(the flow) first, and check the address and the firewall.") from exc
            time.sleep(1)


def _run_until_done(command: list[str], spread: DistributedConfig) -> tuple[int, str]:
    """Run torchrun, its output passed on to ours as it comes; on any way out (an interrupt, a cancelled flow),
    stop it and every rank it started. Returns its exit code and its last lines."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                               start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid()),
                               env=_rank_environment(spread))
    tail: deque[str] = deque(maxlen=OUTPUT_LINES)
    try:
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line)
            if interruption.requested():   # Ctrl-C reaches this process only (the ranks have their own session)
                return -signal.SIGINT, "".join(tail)
        return process.wait(), "".join(tail)
    finally:
        _stop_tree(process)


def _rank_environment(spread: DistributedConfig) -> dict[str, str]:
    """The ranks run the worker from the code this process runs (a checkout's pipeline/ before any installed copy),
    each with its share of the cores for its threads (torchrun would give each one thread, and say so)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    threads = str(max(1, len(os.sched_getaffinity(0)) // spread.nproc_per_node))
    return {"OMP_NUM_THREADS": threads, **os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


def _stop_tree(process: subprocess.Popen) -> None:
    """torchrun and its ranks (each in a session of its own): torchrun is asked to stop them, then what is left
    is killed."""
    try:
        tree = [process, *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    for leftover in tree[1:]:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout:
        process.stdout.close()


def _failure(spread: DistributedConfig, launch_dir: Path, returncode: int, output: str) -> Exception:
    """The one-line error for a failed launch: a rank's own project error, a rank that died, or torchrun's."""
    reported = sorted(launch_dir.glob("error-*.json"))
    if reported:
        error = json.loads(reported[0].read_text())
        return getattr(errors, error["class"], ModelError)(error["message"])
    cause = ROOT_CAUSE.search(output)
    world = spread.nproc_per_node * spread.nnodes
    if cause:
        rank, code = int(cause.group(1)), int(cause.group(2))
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
               else f"exited with code {code}")
        return TrainingCrashed(f"Distributed training failed: rank {rank} of {world} {how} (its output is above); "
                               f"every rank was stopped and nothing was registered. A re-run resumes from the last "
                               f"checkpoint.")
    if re.search(r"timed out|TimeoutError", output, re.I):
        return EnvironmentProblem(f"Distributed training failed: not every node joined at "
                                  f"{spread.master_addr}:{spread.master_port} within "
                                  f"{spread.rendezvous_timeout_s:g} s; start `tunegate train-node` on each of the "
                                  f"other {spread.nnodes - 1} node(s).")
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
    return ModelError(f"Distributed training failed: torchrun exited with code {returncode} ({last}).")


def _check_ranks_agree(spread: DistributedConfig, launch_dir: Path) -> None:
    """Every rank of this node finished, with the same weights (DDP keeps them equal; unequal ones mean the ranks
    trained apart)."""
    reports = [json.loads(path.read_text()) for path in sorted(launch_dir.glob("rank-*.json"))]
    digests = {report["digest"] for report in reports}
    # FSDP: each rank holds its own shard
    if len(reports) != spread.nproc_per_node or (spread.strategy == "ddp" and len(digests) != 1):
        raise ModelError(f"Distributed training ended with {len(reports)} of {spread.nproc_per_node} ranks of this "
                         f"node reporting, with {len(digests)} different sets of weights: the "
                         f"ranks did not train as one model; nothing was registered.")


def result_to_json(result: TrainResult) -> dict:
    return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(result).items()}


def result_from_json(data: dict) -> TrainResult:
    paths = {field.name for field in fields(TrainResult) if "Path" in str(field.type)}
    return TrainResult(**{key: Path(value) if key in paths and value is not None else value
                          for key, value in data.items()})
