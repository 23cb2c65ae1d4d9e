"""Another machine of a multi-node training run: `tunegate train-node`, or a deployment in that machine's work pool
(prefect.yaml). Node 0 runs the retraining flow; this flow runs this machine's ranks of its training step, on the
same data version (the split, reproduced here from DVC), and ends when the training does."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from pipeline.config import load_config
from pipeline.data.split import read_split, split_paths
from pipeline.data.versioning import reproduce_splits
from pipeline.training.distributed import join_training
from pipeline.training.loop import run_dir
from pipeline.training.warm_start import from_parent


@flow(name="train-node")
def train_node(project_dir: str = ".", overrides: list[str] | None = None) -> str:
    config = load_config(Path(project_dir), overrides or [])
    work_config, _ = from_parent(config)     # a warm start trains from the same champion on every node
    data_version = reproduce_splits(work_config.project_dir)
    paths = split_paths(work_config)
    spread = work_config.train.distributed
    get_run_logger().info("node %d of %d: %d ranks, data version %s, rendezvous at %s:%d", spread.node_rank,
                          spread.nnodes, spread.nproc_per_node, data_version.version, spread.master_addr,
                          spread.master_port)
    join_training(work_config, read_split(paths.train), read_split(paths.validation),
                  run_dir(work_config, data_version.version))
    return (f"node {spread.node_rank} of {spread.nnodes}: {spread.nproc_per_node} ranks trained on data version "
            f"{data_version.version[:12]}; node 0 registers the model")
