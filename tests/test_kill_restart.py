"""A run killed (SIGKILL) during each step and started again ends in a correct state.

One project is run again and again, each run killed one step further on than the one before, so that each run
also restarts from the kill before it; a last run finishes. Then a continual step is killed between deciding on
its version and moving the alias, and started again. The runs are real `tunegate` processes (tests/kill_at.py) against one Prefect server,
as scheduled runs are; between them the test reads the store.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.data import batches

from pipeline.governance import gates, lineage
from pipeline.governance.aliases import AliasMove, alias_history
from pipeline.governance.registration import REGISTRATION_TMP, card_description
from pipeline.governance.serving import MODEL_ARTIFACT
from pipeline.governance.store import connect, tracking_uri
from pipeline.governance.versions import (MODEL_CARD_ARTIFACT, REASON_TAG, REPORTS_DIR, VersionRow, list_versions,
                                          registered_model_dir)
from pipeline.config import load_config
from pipeline.governance.promotion import DECISION_RECORD, FLOW_DECISION
from pipeline.training.loop import TRAINER_STATE
from tests.conftest import REPO, free_port, healthy, make_project, wait_for
from tests.kill_at import KILLED_AT


@dataclass(frozen=True)
class Step:
    name: str
    target: str      # the function whose call (before) or return (after) the run dies at
    when: str


STEPS = [
    Step("audit", "pipeline.audit.checks:write_report", "before"),               # every check run, no report written
    Step("split", "dvc.repo:Repo.push", "before"),                        # dvc.lock written, the splits not pushed
    Step("training", "transformers.trainer_callback:CallbackHandler.on_save", "before"),   # first checkpoint saved
    Step("evaluation", "pipeline.tasks.classification.evaluation:general_scores", "before"),   # task suite scored, general suite not
    Step("registration", "mlflow:register_model", "after"),               # version created, nothing decided
    # the decision and the move recorded; the alias not moved, no model card, no decision tags
    Step("promotion", "mlflow:MlflowClient.set_registered_model_alias", "before"),
]
TRAIN_ROWS = 160         # 10 steps of 16
CHECKPOINT_STEPS = 5
BATCH = "electronics"
# registered, decided against the champion (its numbers logged in the run), the alias not moved
CONTINUAL_KILL = Step("promotion", "pipeline.governance.promotion:move_alias", "before")
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Run:
    returncode: int
    log: str
    versions: dict[str, VersionRow]   # the store as the run left it
    moves: list[AliasMove]
    data_version: str | None                   # in dvc.lock
    pushed: bool                               # that data version is in the DVC remote


class Runner:
    """Starts runs through tests/kill_at.py and reads the store after each."""

    def __init__(self, env: dict[str, str]):
        self.driver = subprocess.Popen([sys.executable, "-m", "tests.kill_at"], cwd=REPO, env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, project: Path, command: str, step: Step | None = None) -> Run:
        log = project.parent / f"{command}-{step.name if step else 'restart'}.log"
        request = {"args": ["--project-dir", str(project), command], "log": str(log),
                   "target": step.target if step else None, "when": step.when if step else None}
        self.driver.stdin.write(json.dumps(request) + "\n")
        self.driver.stdin.flush()
        returncode = json.loads(self.driver.stdout.readline())["returncode"]
        config = load_config(project)
        # read, not made here: a run makes its sqlite store when it first asks the registry
        store = Path(tracking_uri(config).removeprefix("sqlite:///")).is_file()
        lock = project / "dvc.lock"
        version = yaml.safe_load(lock.read_text())["stages"]["split"]["outs"][0]["md5"] if lock.is_file() else None
        pushed = version is not None and (project / ".dvc/storage/files/md5" / version[:2] / version[2:]).is_file()
        return Run(returncode, log.read_text(),
                   {row.version: row for row in list_versions(connect(config))} if store else {},
                   alias_history(connect(config)) if store else [], version, pushed)

    def close(self) -> None:
        self.driver.stdin.close()
        self.driver.wait(timeout=60)


def _batch(project: Path) -> Path:
    """Electronics reviews, half of each label: a new task for the continual step."""
    frame = pd.read_csv(REPO / "data/raw/amazon-electronics/reviews.tsv", sep="\t", keep_default_na=False, dtype=str)
    path = project / "data/incoming" / f"{BATCH}.tsv"
    path.parent.mkdir(parents=True)
    pd.concat([group.head(40) for _, group in frame.groupby("label")]).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Each step's killed run, the run that finished, then a continual step killed before its alias moved and its
    restart; the project under "project"."""
    root = tmp_path_factory.mktemp("kill")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "PREFECT_API_URL": api_url,
           "PREFECT_LOGGING_LEVEL": "INFO"}
    # The Prefect server the runs report to outlives the runs that are killed, as a team's server does.
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--no-services", "--no-ui",
                               "--host", "127.0.0.1", "--port", api_url.rsplit(":", 1)[1].removesuffix("/api")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runner = Runner(env)   # both start (imports, seconds) while the project is made
    try:
        project = make_project(root / "project", split={"max_train_rows": TRAIN_ROWS}, model={"max_length": 64},
                               train={"eval_steps": CHECKPOINT_STEPS, "save_steps": CHECKPOINT_STEPS})
        wait_for(lambda: healthy(f"{api_url}/health"), 120, "Prefect server", [server], poll_s=0.5)
        observed = {step.name: runner(project, "retrain", step) for step in STEPS}
        observed["finished"] = runner(project, "retrain")
        _batch(project)
        observed["continual killed"] = runner(project, "continual", CONTINUAL_KILL)
        observed["continual"] = runner(project, "continual")
    finally:
        runner.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return {**observed, "project": project}


def _files(project: Path, version: str) -> set[str]:
    """The files of a registered version: its run's (reports, model card, decision record, lineage) and its model's."""
    config = load_config(project)
    store = connect(config)
    run_id = store.client.get_model_version(config.registry.model_name, version).run_id
    model_dir = registered_model_dir(store, f"models:/{config.registry.model_name}/{version}")
    return {artifact.path for folder in ("", REPORTS_DIR, "lineage")
            for artifact in store.client.list_artifacts(run_id, folder)} | {
        path.name for folder in (model_dir, model_dir / "artifacts" / MODEL_ARTIFACT) for path in folder.iterdir()}


def _run_name(project: Path, run: Run) -> str:
    """The retrain flow's folder name for its outputs: the data version and the params hash."""
    return next((project / "outputs/train").glob(f"{run.data_version[:12]}-*")).name


@pytest.mark.parametrize("step", STEPS, ids=[step.name for step in STEPS])
def test_each_run_dies_by_sigkill_where_the_test_chose(runs, step):
    killed = runs[step.name]
    assert killed.returncode == -signal.SIGKILL
    assert killed.log.rstrip().endswith(f"{KILLED_AT} {step.target} ({step.when})")


def test_a_run_killed_in_the_audit_is_audited_again(runs):
    project, killed = runs["project"], runs["audit"]
    assert "Task run 'audit" not in killed.log    # the task never finished
    assert killed.data_version is None and not killed.versions   # nothing after it ran
    assert "audit passed" in runs["split"].log   # audited again, not read from a cache
    assert (project / "outputs/audit/audit.json").is_file() and (project / "outputs/audit/audit.html").is_file()


def test_a_run_killed_before_the_push_leaves_a_data_version_the_restart_pushes(runs):
    killed, restarted = runs["split"], runs["training"]
    assert killed.data_version is not None and not killed.pushed and not killed.versions
    assert restarted.data_version == killed.data_version and restarted.pushed
    assert f"data version {killed.data_version}" in restarted.log
    assert runs["finished"].versions["1"].tags["data_version"] == killed.data_version
    project = runs["project"]   # after the continual step too: dvc.lock names the splits on disk, all pushed
    for command in (["status"], ["status", "--cloud"]):
        status = subprocess.run([sys.executable, "-m", "dvc", *command], cwd=project, capture_output=True,
                                text=True, check=True)
        assert "up to date" in status.stdout or "in sync" in status.stdout, status.stdout


def test_training_killed_after_a_checkpoint_resumes_from_it(runs):
    project, killed, restarted = runs["project"], runs["training"], runs["evaluation"]
    assert "'epoch': '0.5'" in killed.log and not killed.versions   # evaluated, saved at step 5 of 10, then killed
    checkpoints = project / "outputs/train" / _run_name(project, killed) / "checkpoints"
    assert f"resumed from {checkpoints / f'checkpoint-{CHECKPOINT_STEPS}'}" in restarted.log
    assert "'epoch': '0.5'" not in restarted.log and "'epoch': '1'" in restarted.log   # steps 6 to 10 only


def test_evaluation_killed_is_done_again_and_training_read_from_its_cache(runs):
    project, killed, restarted = runs["project"], runs["evaluation"], runs["registration"]
    assert not killed.versions
    assert re.search(r"Task run 'train-\w+' - Finished in state Cached", restarted.log)
    evaluation = project / "outputs/evaluation" / _run_name(project, killed) / "evaluation.json"
    assert f"evaluation report {evaluation}" in restarted.log


def test_a_version_registered_by_a_killed_run_is_finished_not_registered_again(runs):
    killed, restarted = runs["registration"], runs["promotion"]
    assert list(killed.versions) == ["1"]
    left = killed.versions["1"]
    assert not left.finished and left.aliases == [] and not killed.moves   # never decided, no alias
    assert "finishing version 1" in restarted.log
    assert list(restarted.versions) == ["1"]


def test_a_run_killed_before_the_alias_moved_is_finished_with_its_recorded_decision(runs):
    killed, finished = runs["promotion"], runs["finished"]
    assert killed.versions["1"].aliases == [] and not killed.versions["1"].finished
    assert [(m.action, m.alias, m.to_version) for m in killed.moves] == [(FLOW_DECISION, "champion", "1")]
    assert finished.moves == killed.moves   # the decision made before the kill stands, not a second one
    assert finished.versions["1"].aliases == ["champion"]   # the recorded move made
    assert finished.returncode == 0
    assert re.search(r"^registered +tunegate-sst2 version 1$", finished.log, re.MULTILINE)
    assert re.search(r"^decision +champion: ", finished.log, re.MULTILINE)


def test_the_finished_run_leaves_one_complete_version(runs):
    project, finished = runs["project"], runs["finished"]
    assert list(finished.versions) == ["1"]
    version = finished.versions["1"]
    assert version.finished and version.aliases == ["champion"]
    assert version.tags[REASON_TAG] == finished.moves[0].reason
    assert version.tags["data_version"] == finished.data_version and finished.pushed
    assert {"reports/audit.json", "reports/audit.html", "reports/evaluation.json", MODEL_CARD_ARTIFACT,
            DECISION_RECORD, lineage.RECORD_ARTIFACT, "MLmodel", "model.safetensors"} <= _files(project, "1")
    config = load_config(project)
    client = connect(config).client
    described = client.get_model_version(config.registry.model_name, "1")
    card = Path(client.download_artifacts(described.run_id, MODEL_CARD_ARTIFACT)).read_text()
    assert described.description == card_description(card)


def test_a_continual_step_killed_before_its_alias_moved_leaves_its_batch_to_the_restart(runs):
    project, killed, restarted = runs["project"], runs["continual killed"], runs["continual"]
    config = load_config(project)
    assert killed.returncode == -signal.SIGKILL
    assert killed.log.rstrip().endswith(f"{KILLED_AT} {CONTINUAL_KILL.target} ({CONTINUAL_KILL.when})")
    assert set(killed.versions) == {"1", "2"} and killed.moves == runs["finished"].moves
    assert not killed.versions["2"].finished and killed.versions["2"].tags[batches.BATCH_TAG] == BATCH
    assert batches.next_batch(config, batches.used_batch_md5s(list(killed.versions.values()))).name == BATCH

    assert restarted.returncode == 0 and f"Batch {BATCH} learned." in restarted.log
    assert set(restarted.versions) == {"1", "2"} and restarted.versions["2"].finished
    assert restarted.versions["2"].aliases and [m.to_version for m in restarted.moves].count("2") == 1
    assert batches.next_batch(config, batches.used_batch_md5s(list(restarted.versions.values()))) is None
    assert {MODEL_CARD_ARTIFACT, DECISION_RECORD, lineage.RECORD_ARTIFACT, "MLmodel",
            "model.safetensors"} <= _files(project, "2")
    client = connect(config).client
    run_id = client.get_model_version(config.registry.model_name, "2").run_id
    decision = json.loads(Path(client.download_artifacts(run_id, DECISION_RECORD)).read_text())
    assert decision["champion"]["version"] == "1"
    # decided again on the version's own numbers, not on the champion's the killed run logged beside them
    assert not [gate["name"] for gate in decision["gates"] if gate["name"].startswith(gates.CHAMPION_PREFIX)]


# --- the run's own temporary Prefect server: Ctrl-C, then SIGKILL ---------------------------------------------------

# MLflow has copied the model into its temporary folder and not yet logged it
MODEL_LOGGING = Step("model logging", "mlflow.models.model:Model.get_serving_input", "before")
INTERRUPTED = re.compile(r"^tunegate: interrupted; nothing registered; run again to resume from checkpoint (\d+)$")


def _temporary_servers(prefect_home: Path) -> set[int]:
    """The PIDs of the temporary Prefect servers that runs with this PREFECT_HOME started, alive now."""
    found = set()
    for process in Path("/proc").glob("[0-9]*"):
        try:
            command = (process / "cmdline").read_bytes()
            environment = (process / "environ").read_bytes().split(b"\0")
        except OSError:   # ended meanwhile
            continue
        if b"prefect.server.api.server:create_app" in command and f"PREFECT_HOME={prefect_home}".encode() in environment:
            found.add(int(process.name))
    return found


def _no_server_within_seconds(prefect_home: Path) -> bool:
    deadline = time.monotonic() + 15
    while _temporary_servers(prefect_home):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture(scope="module")
def own_server(tmp_path_factory) -> dict:
    """Runs that start their own temporary Prefect server (no PREFECT_API_URL), as a user's `tunegate retrain` does:
    one stopped in training by a terminal's Ctrl-C (SIGINT to its process group); the same run again, SIGKILLed while
    MLflow logs its model; and again, to its end. The system's temporary folder is the test's own; the project under
    "project", that folder under "tmp"."""
    root = tmp_path_factory.mktemp("own-server")
    (root / "tmp").mkdir()
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO",
           "TMPDIR": str(root / "tmp")}
    env.pop("PREFECT_API_URL", None)
    runner = Runner(env)
    try:
        project = make_project(root / "project", split={"max_train_rows": TRAIN_ROWS}, model={"max_length": 64},
                               train={"epochs": 3, "eval_steps": CHECKPOINT_STEPS, "save_steps": CHECKPOINT_STEPS})
        log = root / "retrain-interrupted.log"
        with log.open("w") as output:
            process = subprocess.Popen([sys.executable, "-m", "flows.cli", "--project-dir", str(project), "retrain"],
                                       cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        first = f"*/checkpoints/checkpoint-{CHECKPOINT_STEPS}/{TRAINER_STATE}"
        wait_for(lambda: any((project / "outputs/train").glob(first)), 300, "the first checkpoint", [process],
                 poll_s=0.2)
        sessions = [os.getsid(pid) for pid in _temporary_servers(root / "prefect")]
        os.killpg(process.pid, signal.SIGINT)   # a terminal's Ctrl-C: to the whole foreground process group
        started = time.monotonic()
        returncode = process.wait(timeout=300)
        seconds = time.monotonic() - started
        text = log.read_text()
        interrupted = Run(returncode, text, _versions(project), [], None, False)
        servers = {"interrupted": _no_server_within_seconds(root / "prefect")}
        observed = {"interrupted": interrupted}
        for name, step in (("killed", MODEL_LOGGING), ("finished", None)):
            observed[name] = runner(project, "retrain", step)
            servers[name] = _no_server_within_seconds(root / "prefect")
            if name == "killed":   # MLflow's copy of the model, that the kill left
                copies = list((project / "outputs/train").glob(f"*/{REGISTRATION_TMP}/**/{WEIGHTS}"))
    finally:
        runner.close()
    return {**observed, "project": project, "tmp": root / "tmp", "seconds": seconds, "sessions": sessions,
            "run_session": process.pid, "servers_gone": servers, "copies": copies}


def _versions(project: Path) -> dict[str, VersionRow]:
    """The registered versions; none where no run has made the store yet."""
    config = load_config(project)
    if not Path(tracking_uri(config).removeprefix("sqlite:///")).is_file():
        return {}
    return {row.version: row for row in list_versions(connect(config))}


def test_ctrl_c_stops_training_after_a_step_registers_nothing_and_exits_130(own_server):
    run = own_server["interrupted"]
    assert run.returncode == 130, run.log[-3000:]
    lines = [line for line in run.log.splitlines() if line.startswith("tunegate:")]
    assert len(lines) == 1 and INTERRUPTED.match(lines[0]), run.log[-3000:]   # one line, with the checkpoint
    assert int(INTERRUPTED.match(lines[0])[1]) >= CHECKPOINT_STEPS   # the run started again resumes from it (below)
    assert not run.versions   # nothing registered
    assert own_server["seconds"] < 60
    # its server, in a session of its own, outlived the process group's SIGINT: the run reported to it to its end
    assert len(own_server["sessions"]) == 1 and own_server["sessions"][0] != own_server["run_session"]
    assert "Unable to connect" not in run.log and "ConnectError" not in run.log
    assert own_server["servers_gone"]["interrupted"]   # and it stopped when the run ended


def test_a_run_started_again_resumes_from_the_checkpoint_ctrl_c_named(own_server):
    checkpoint = re.search(r"run again to resume from checkpoint (\d+)", own_server["interrupted"].log)[1]
    assert re.search(rf"resumed from \S+/checkpoint-{checkpoint}\b", own_server["killed"].log)


def test_a_run_killed_leaves_no_server_and_no_model_copy_in_the_system_temp_folder(own_server):
    killed = own_server["killed"]
    assert killed.returncode == -signal.SIGKILL
    assert killed.log.rstrip().endswith(f"{KILLED_AT} {MODEL_LOGGING.target} ({MODEL_LOGGING.when})")
    assert own_server["servers_gone"]["killed"]   # its temporary server ended with it: not adopted by init
    assert not list(own_server["tmp"].rglob(WEIGHTS))
    assert own_server["copies"]   # MLflow's copy of the model: in the run's folder


def test_the_run_after_a_kill_removes_the_model_copy_it_left(own_server):
    project, finished = own_server["project"], own_server["finished"]
    assert finished.returncode == 0, finished.log[-3000:]
    assert list(finished.versions) == ["1"] and finished.versions["1"].finished
    assert not list((project / "outputs/train").glob(f"*/{REGISTRATION_TMP}"))
    assert own_server["servers_gone"]["finished"]
