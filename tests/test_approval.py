"""A person approves a promotion (gates.approval: required): one real Prefect server on 127.0.0.1 for the module,
the flow paused for a reviewer, `tunegate approve/reject` through its API, a timeout, the tunegate.alias.moved
events a subscriber receives, and the approval form driven in the Prefect UI in headless Chromium."""
from __future__ import annotations

import asyncio
import json
import contextvars
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from uuid import UUID

import pytest

from flows.approval import approval_flow
from flows.cli import main
from flows.events import ALIAS_MOVED
from flows.retrain import retrain
from pipeline.config import load_config
from pipeline.errors import ModelError
from pipeline.data.split import read_split, split_paths
from pipeline.governance.aliases import alias_history
from pipeline.governance.approval import PENDING_TAG
from pipeline.governance.promotion import DECISION_RECORD, promote_candidate
from pipeline.governance.registration import Candidate, attach_model_card, register_candidate, set_decision_tags
from pipeline.governance.store import connect
from pipeline.governance.versions import MODEL_CARD_ARTIFACT, champion_version, find_version, read_run_text
from pipeline.training.loop import run_dir
from tests.conftest import free_port, healthy, make_project, wait_for

MODEL = "tunegate-sst2"
GATES = {"min_accuracy": 0.0, "approval": "required", "approval_timeout": 600, "approval_poll_s": 1,
         "lock": {"lease_s": 600, "wait_s": 30, "poll_s": 0.5}}
SERVER_START_S = 120


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A Prefect server on a free loopback port, its home and database in tmp, its UI pointed at its own API; this
    process (its settings) and the commands it starts (their environment) talk to it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_API_URL": api}
    with log.open("w") as output:
        server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], env=env, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: healthy(f"{api}/health"), SERVER_START_S, f"the Prefect server (its log: {log})", [server],
                 poll_s=0.5)
        with pytest.MonkeyPatch.context() as environment, temporary_settings({PREFECT_API_URL: api}):
            environment.setenv("PREFECT_API_URL", api)
            yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def in_background(function, *args) -> Future:
    """function(*args) in a thread of its own, with this thread's Prefect settings (a context variable)."""
    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(contextvars.copy_context().run, function, *args)
    executor.shutdown(wait=False)
    return future


@pytest.fixture(scope="module")
def alias_events(prefect_api):
    """Every tunegate.alias.moved event the server sends a subscriber (over its websocket), as they come."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    events, stop = [], threading.Event()

    async def listen():
        async with get_events_subscriber(filter=EventFilter(event=EventNameFilter(name=[ALIAS_MOVED]))) as events_in:
            async for event in events_in:
                events.append(event)
                if stop.is_set():
                    return

    in_background(asyncio.run, listen())
    yield events
    stop.set()


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api, alias_events):
    return make_project(tmp_path_factory.mktemp("approval") / "project", gates=GATES)


def waiting_run(config, version: str, run: Future) -> UUID:
    """The paused flow run that waits for version's reviewer, once the form is up; fails if run ends first."""
    from prefect.client.orchestration import get_client

    def paused() -> UUID | None:
        if run.done():
            raise AssertionError(f"the run ended before version {version} waited for approval: {run.result()}")
        try:
            flow_run_id = find_version(connect(config), f"models:/{MODEL}/{version}").tags.get(PENDING_TAG)
        except ModelError:   # not registered yet
            return None
        if not flow_run_id:
            return None
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
        return UUID(flow_run_id) if state and state.is_paused() else None

    return wait_for(paused, 600, f"version {version} waiting for approval", [], poll_s=1)


def tunegate(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The `tunegate` command, as a terminal user runs it (this worktree's code first)."""
    return subprocess.run([str(Path(sys.executable).parent / "tunegate"), "--project-dir", str(project), *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.fixture(scope="module")
def approved(project):
    """A retrain whose version passes every gate: it waits as `candidate` until `tunegate approve` answers."""
    config = load_config(project)
    run = in_background(retrain, str(project))
    waiting_run(config, "1", run)
    listed = tunegate(project, "models")
    answer = tunegate(project, "approve", "1", "--reason", "read the card and the gates; fine", "--by", "alice")
    return config, listed, answer, run.result(timeout=300)


def candidate(config, first) -> str:
    """Another version like the first (its model, metrics, data version and card), through the gates as the flow's
    promote and finish steps do: it passes them and becomes `candidate`; returns its number."""
    store = connect(config)
    data_version = first.data_version
    version = register_candidate(store, Candidate(
        model_dir=run_dir(config, data_version) / "model", params={"train": {"method": "lora"}},
        metrics=first.metrics, tags={"data_version": data_version, "method": "lora"}, artifacts=[]))
    promoted = promote_candidate(config, version, data_version, read_split(split_paths(config).test),
                                 config.project_dir / "outputs/champion", "tests")
    assert promoted.alias == "candidate"
    original = find_version(store, f"models:/{MODEL}/1")
    attach_model_card(store, version, read_run_text(store, original.run_id, MODEL_CARD_ARTIFACT))
    set_decision_tags(store, version, promoted.alias, promoted.move.reason)
    return version.version


def test_tunegate_approve_resumes_the_paused_run_and_champion_moves(approved):
    config, listed, answer, summary = approved
    assert listed.returncode == 0, listed.stderr
    assert "Waiting for a reviewer's approval:" in listed.stdout and "tunegate approve 1 --reason" in listed.stdout
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "champion: version - -> 1 (approval by alice)"
    assert (summary.version, summary.alias) == ("1", "champion")
    assert summary.reason.startswith("approval by alice: read the card and the gates; fine (gates: ")
    store = connect(config)
    assert champion_version(store).version == "1"
    moves = [(m.action, m.alias, m.to_version, m.by, m.reason) for m in alias_history(store)]
    assert moves[0][:3] == ("flow decision", "candidate", "1")
    assert moves[-1] == ("approval", "champion", "1", "alice", "read the card and the gates; fine")
    tags = find_version(store, f"models:/{MODEL}/1").tags
    assert PENDING_TAG not in tags and tags["promotion_decision"] == "champion"


def test_tunegate_reject_makes_it_challenger(approved):
    config, _, _, first = approved
    version = candidate(config, first)
    run = in_background(approval_flow, config, version)
    waiting_run(config, version, run)
    answer = tunegate(config.project_dir, "reject", version, "--reason", "v1 is enough for now", "--by", "bob")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == f"challenger: version - -> {version} (rejection by bob)"
    move = run.result(timeout=120)
    assert (move.alias, move.action, move.by, move.reason) == ("challenger", "rejection", "bob", "v1 is enough for now")
    assert champion_version(connect(config)).version == "1"


def test_no_answer_within_the_timeout_makes_it_challenger(approved):
    config, _, _, first = approved
    version = candidate(config, first)
    move = approval_flow(load_config(config.project_dir, ["gates.approval_timeout=3"]), version)
    assert (move.alias, move.action, move.by) == ("challenger", "approval timeout", "tunegate")
    assert move.reason == "no reviewer answered within gates.approval_timeout=3 s"
    assert champion_version(connect(config)).version == "1"
    assert PENDING_TAG not in find_version(connect(config), f"models:/{MODEL}/{version}").tags


@pytest.mark.parametrize("args, error", [
    (["approve", "1"], "Version 1 of tunegate-sst2 is not waiting for approval: it was decided already: approval by "
                       "alice (read the card and the gates; fine); nothing changed."),
    (["reject", "2"], "Version 2 of tunegate-sst2 is not waiting for approval: it was decided already: rejection by "
                      "bob (v1 is enough for now); nothing changed."),
    (["approve", "99"], "models:/tunegate-sst2/99"),
])
def test_a_version_not_waiting_or_decided_twice_is_one_line_and_changes_nothing(approved, args, error, capsys):
    config = approved[0]
    store = connect(config)
    before = (alias_history(store), store.client.get_registered_model(MODEL).aliases)
    assert main(["--project-dir", str(config.project_dir), *args, "--reason", "again"]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("tunegate: error: ") and error in message
    assert (alias_history(store), store.client.get_registered_model(MODEL).aliases) == before


def test_each_alias_move_is_an_event_a_subscriber_receives(approved, alias_events):
    config = approved[0]
    moves = alias_history(connect(config))
    wait_for(lambda: len(alias_events) >= len(moves), 60, "an event for each alias move", [], poll_s=0.5)
    received = [(event.payload["version"], event.payload["alias"], event.payload["action"], event.payload["reason"])
                for event in alias_events]
    assert sorted(received) == sorted((m.to_version, m.alias, m.action, m.reason) for m in moves)
    approval = next(event for event in alias_events if event.payload["action"] == "approval")
    assert (approval.resource.id, approval.resource["tunegate.alias"]) == (f"tunegate.model.{MODEL}", "champion")
    assert {key: approval.payload[key] for key in ("model", "version", "alias", "by")} == {
        "model": MODEL, "version": "1", "alias": "champion", "by": "alice"}


def test_the_approval_form_in_the_prefect_ui(approved, prefect_api, chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    config, _, _, first = approved
    version = candidate(config, first)
    run = in_background(approval_flow, config, version)
    flow_run_id = waiting_run(config, version, run)
    chromium.get(f"{prefect_api.removesuffix('/api')}/runs/flow-run/{flow_run_id}")
    wait = WebDriverWait(chromium, 120)
    wait.until(lambda page: [b for b in page.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Resume"])[0]\
        .click()
    form = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, ".p-modal .schema-input"))
    modal = chromium.find_element(By.CSS_SELECTOR, ".p-modal")
    chromium.save_screenshot(str(tmp_path / "approval-review.png"))
    shown = modal.get_attribute("textContent")   # all of it, also what the dialog shows only when scrolled
    assert f"models:/{MODEL}/{version} waits for your approval" in shown
    store = connect(config)
    decision = json.loads(read_run_text(store, find_version(store, f"models:/{MODEL}/{version}").run_id,
                                        DECISION_RECORD))
    assert [gate["name"] for gate in decision["gates"] if gate["name"] not in shown] == []   # the gates' table
    assert "Intended use and limits" in shown                                                # the card's summary
    fields = {label.find_element(By.CSS_SELECTOR, ".schema-form-property__label").text: label
              for label in form.find_elements(By.CSS_SELECTOR, ".schema-form-property")}
    assert list(fields) == ["Decision", "Reviewer", "Reason"]
    Select(fields["Decision"].find_element(By.TAG_NAME, "select")).select_by_value("approve")
    fields["Reviewer"].find_element(By.TAG_NAME, "textarea").send_keys("carol")
    fields["Reason"].find_element(By.TAG_NAME, "textarea").send_keys("checked in the Prefect UI")
    chromium.save_screenshot(str(tmp_path / "approval-form.png"))
    next(b for b in modal.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Submit").click()
    move = run.result(timeout=120)
    assert (move.alias, move.action, move.by, move.reason) == ("champion", "approval", "carol",
                                                                "checked in the Prefect UI")
    assert champion_version(connect(config)).version == version
    chromium.save_screenshot(str(tmp_path / "approved.png"))
    print(f"screenshots: {tmp_path}")
