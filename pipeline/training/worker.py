"""One rank of a distributed run: `python -m pipeline.training.worker SPEC.json`, started by torchrun
(pipeline.training.distributed), which sets RANK, WORLD_SIZE and the rendezvous in the environment.

Every rank runs the same train_model on the same data; the Trainer joins them into one process group. What a rank
leaves in the launch folder is all its launcher reads: rank-N.json (finished: the weights' digest and the rank's
peak memory), error-N.json (a project error: its class and message), and, from rank 0, result.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from pipeline.config import Config
from pipeline.errors import TunegateError
from pipeline.processes import die_with_parent
from pipeline.training.distributed import RANK_ERROR, RANK_REPORT, RESULT, result_to_json
from pipeline.training.loop import train_model


class ParameterDigest(TrainerCallback):
    """The digest of this rank's trained parameters at each checkpoint: under DDP every rank holds the same."""

    def __init__(self):
        self.step, self.digest = 0, None

    def on_save(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                digest.update(name.encode())
                digest.update(parameter.detach().float().cpu().numpy().tobytes())
        self.step, self.digest = state.global_step, digest.hexdigest()


def peak_memory_mb() -> float:
    """This rank's peak memory: allocated on its GPU, else the process's resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write(path: Path, record: dict) -> None:
    """Whole or not at all: the launcher may read it as soon as the rank exits."""
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(record))
    staging.replace(path)


def main(spec_path: Path) -> int:
    die_with_parent()   # torchrun killed outright: this rank goes too
    spec = json.loads(spec_path.read_text())
    config = Config.model_validate_json(spec["config"]).model_copy(update={"project_dir": Path(spec["project_dir"])})
    launch_dir, rank = spec_path.parent, int(os.environ["RANK"])
    digest = ParameterDigest()
    try:
        result = train_model(config, pd.read_parquet(launch_dir / "train.parquet"),
                             pd.read_parquet(launch_dir / "validation.parquet"), Path(spec["output_dir"]),
                             callbacks=[digest])
    except TunegateError as exc:
        _write(launch_dir / RANK_ERROR.format(rank=rank), {"class": type(exc).__name__, "message": str(exc)})
        return 1
    _write(launch_dir / RANK_REPORT.format(rank=rank), {"step": digest.step, "digest": digest.digest,
                                                        "peak_memory_mb": peak_memory_mb()})
    if rank == 0:
        _write(launch_dir / RESULT, result_to_json(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
