"""Shared fixtures: a throwaway, offline environment and a small real tunegate project in a temp dir."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Before any library import: offline, quiet, and a Prefect home of this session's own
# (Prefect's cache and its ephemeral database persist across processes otherwise).
_session_home = Path(tempfile.mkdtemp(prefix="tunegate-tests-"))
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_HOME": str(_session_home / "prefect"),
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",   # the default 20 s fails on a loaded machine
    "OMP_WAIT_POLICY": "PASSIVE",   # as pipeline/__init__.py sets it, before torch loads (see there)
})
os.environ.pop("MLFLOW_TRACKING_URI", None)

from pipeline.config import METHODS  # noqa: E402  (after the environment above, which the library reads at import)

TRAINABLE_METHODS = [m for m in METHODS if m != "qlora"]   # qlora needs CUDA (tests/test_training.py: its refusal)

SMALL_ROWS = {"train": 400, "dev": 100, "test": 200}

# pytest-xdist (pyproject's addopts) hands each worker a whole file at a time, in collection order. The files that run
# many whole flows go first, longest first (their times, summed over their tests, on 2 cores: 4 to 1.5 minutes), so
# that the short files fill in at the end and neither worker finishes the session alone on a long one.
LONGEST_FIRST = ("test_continual.py", "test_kill_restart.py", "test_distributed.py", "test_lineage.py",
                 "test_retrain_flow.py", "test_approval.py", "test_training.py", "test_faults.py", "test_secrets.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)   # stable: the other files, and the tests within a file, keep their order


def _sst2_head(name: str, rows: int) -> pd.DataFrame:
    """The first rows/2 rows of each label of the repo's SST-2 file `name` (train, dev, test), as read."""
    frame = pd.read_csv(REPO / "data/raw/sst2" / f"{name}.tsv", sep="\t", keep_default_na=False, dtype=str)
    return frame.groupby("label", group_keys=False).head(rows // 2)


def sst2_rows(name: str, rows: int) -> pd.DataFrame:
    """Real SST-2 rows, a stratified head of the file `name`, in the columns of a split file (text, integer label)."""
    from pipeline.data.split import LABEL, TEXT

    frame = _sst2_head(name, rows)
    return pd.DataFrame({TEXT: frame["sentence"], LABEL: frame["label"].astype(int)}).reset_index(drop=True)


def write_sst2_slice(raw_dir: Path, rows: dict[str, int] = SMALL_ROWS) -> None:
    """Real SST-2 rows, a stratified head of each file as it comes (sentences of the test file are longest: few
    rows); rows: how many of each file."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, count in rows.items():
        _sst2_head(name, count).to_csv(raw_dir / f"{name}.tsv", sep="\t", index=False)


# Benchmark slices: the first STS-B test pairs; the EEC sentences of two templates (one emotion
# word each, all 60 persons), enough for every pairing of the counterfactual test.
STSB_PAIRS = 40
EEC_SLICE = {"<person subject> feels <emotion word>.": "angry", "I made <person object> feel <emotion word>.": "happy"}


def write_benchmark_slices(raw_dir: Path) -> None:
    (raw_dir / "stsb").mkdir(parents=True, exist_ok=True)
    lines = (REPO / "data/raw/stsb/sts-test.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (raw_dir / "stsb/sts-test.csv").write_text("".join(lines[:STSB_PAIRS]), encoding="utf-8")
    eec = pd.read_csv(REPO / "data/raw/eec/Equity-Evaluation-Corpus.csv", keep_default_na=False, dtype=str)
    keep = eec["Template"].map(EEC_SLICE) == eec["Emotion word"]
    (raw_dir / "eec").mkdir(parents=True, exist_ok=True)
    eec[keep].to_csv(raw_dir / "eec/Equity-Evaluation-Corpus.csv", index=False)


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


# The repo's params.yaml, made small enough for a test to train in seconds: every project starts from these.
SMALL_PARAMS = {"split": {"max_train_rows": None}, "train": {"epochs": 1, "batch_size": 16},
                "gates": {"min_accuracy": 0.5}}
PARTS = ("sst2", "benchmarks", "repo")
DROP = object()   # a value in make_project's changes: the key is left out of params.yaml


def _merge(params: dict, changes: dict) -> None:
    """Merge nested changes into params: mappings key by key, any other value replaces; DROP deletes the key."""
    for key, value in changes.items():
        if value is DROP:
            del params[key]
        elif isinstance(value, dict) and isinstance(params.get(key), dict):
            _merge(params[key], value)
        else:
            params[key] = value


def make_project(root: Path, *, parts: Collection[str] = PARTS, **sections: dict) -> Path:
    """The tests' one way to make a tunegate project in root; returns root.

    params.yaml: the repo's, made small (SMALL_PARAMS), with each keyword's changes to its section merged in, e.g.
    `make_project(root, train={"method": "full", "layers": {"lr_decay": 0.5}})`: mappings merge key by key (the
    other keys of train and of train.layers stay), any other value (a list, None) replaces, DROP deletes the key.
    parts, what else the project holds: "sst2" the SST-2 slice (data/raw/sst2), "benchmarks" the STS-B and EEC
    slices (data/raw), "repo" a git and DVC repo (a local remote) with the pipeline code and dvc.yaml, all committed.
    Without "repo" it may be called again on the same root: params.yaml (and the parts) are written anew."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown project parts {sorted(unknown)}; known: {PARTS}")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _merge(params, SMALL_PARAMS)
    _merge(params, sections)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if "sst2" in parts:
        write_sst2_slice(root / "data/raw/sst2")
    if "benchmarks" in parts:
        write_benchmark_slices(root / "data/raw")
    if "repo" in parts:
        shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        git(root, "init", "-q")
        git(root, "config", "user.email", "tests@tunegate.invalid")
        git(root, "config", "user.name", "tunegate tests")
        subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, env={**os.environ, "PATH": _venv_path()})
        subprocess.run(["dvc", "remote", "add", "-q", "-d", "local", str(root / ".dvc/storage")], cwd=root,
                       check=True, env={**os.environ, "PATH": _venv_path()})
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "test project")
    return root


def _venv_path() -> str:
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Two small classifiers made once a session, for tests that register and compare versions without training:
    `trained` (LoRA at a high rate, merged: 25 steps on 400 SST-2 texts) and `untrained` (the base, a fresh head)."""
    import torch

    from pipeline.config import load_config
    from pipeline.training.models import load_classifier, load_tokenizer, resolve_model_path
    from pipeline.data.split import read_split, write_splits
    from pipeline.training.loop import train_model

    root = make_project(tmp_path_factory.mktemp("tiny-models"), parts=("sst2",), model={"max_length": 64},
                        train={"batch_size": 16, "eval_steps": 25, "save_steps": 25, "logging_steps": 25,
                               "precision": "fp32", "warmup_ratio": 0.0, "learning_rate": {"lora": 5.0e-3}})
    config = load_config(root)
    paths = write_splits(config)
    trained = train_model(config, read_split(paths.train), read_split(paths.validation).head(64), root / "trained")
    torch.manual_seed(0)
    base = resolve_model_path(config.model.base)
    # in a folder named `model`, as the flow saves them: the registry logs the folder under its name
    untrained = root / "untrained/model"
    load_classifier(base, config.data.labels).save_pretrained(untrained)
    load_tokenizer(base).save_pretrained(untrained)
    return {"trained": trained.model_dir, "untrained": untrained}


# What an operator reading a run's log file must not find there, and how it shows: progress bars, hints for a person at
# a shell, transformers' load report of a new head, MLflow's notices on each logged model and registration.
LOG_CHATTER = {"carriage-return progress bars": "\r", "DVC's hint": "git add dvc.lock",
               "transformers' load report": "MISSING", "MLflow's pickling notice": "serialized using CloudPickle",
               "MLflow's signature notice": "Inferring model signature",
               "MLflow's new-model notice": "Successfully registered model",
               "MLflow's existing-model notice": "already exists. Creating a new version",
               "MLflow's new-version notice": "Created version '"}


def assert_operator_log(log: str, results: list[str]) -> None:
    """The log holds each step's result (a text each line must contain) and none of the libraries' chatter."""
    assert {what: shows for what, shows in LOG_CHATTER.items() if shows in log} == {}
    assert [result for result in results if result not in log] == [], log[-5000:]


def load_registered(config, model_uri: str):
    """A registered version as `mlflow models serve` loads it, from the project's own store."""
    import mlflow

    from pipeline.governance.store import connect
    from pipeline.governance.versions import registered_model_dir

    return mlflow.pyfunc.load_model(str(registered_model_dir(connect(config), model_uri)))


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def _postgres(sql: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES}/test", connect_timeout=5)
    connection.autocommit = True   # CREATE/DROP DATABASE cannot run in a transaction
    try:
        connection.cursor().execute(sql)
    finally:
        connection.close()


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database on this machine's server, dropped afterwards; the test skips without a server."""
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        _postgres(f"CREATE DATABASE {database}")
    except Exception as exc:   # psycopg2.OperationalError: no server to test against
        pytest.skip(f"PostgreSQL at {POSTGRES} is not reachable: {exc}")
    try:
        yield database
    finally:
        _postgres(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


# --- the causal LM: a tiny Llama with SmolLM2's real tokenizer and chat template ---------------------------------

@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from pipeline.training.models import gguf_file

    source = gguf_file("smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)


def tiny_llama(tokenizer, directory: Path, zero: bool = False) -> Path:
    """A 2-layer Llama of width 16 over SmolLM2's vocabulary, saved with the tokenizer; zero: all weights 0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    if zero:
        with torch.no_grad():
            for param in model.parameters():
                param.zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_dir(tokenizer, tmp_path_factory) -> Path:
    return tiny_llama(tokenizer, tmp_path_factory.mktemp("tiny-llama"))


def lm_config(project_dir: Path, model_dir: Path, data: dict | None = None, **overrides: object):
    """The repo's params with task.type causal_lm on the tiny model, shrunk: 4 steps, small benchmark subsets;
    `data`: changes to the data section (which overrides may not touch: DVC versions it)."""
    from pipeline.config import load_config

    make_project(project_dir, parts=(), data=data or {}, task={"type": "causal_lm"})
    settings = {"model.base": str(model_dir), "model.max_length": 96, "train.layers.freeze_lowest": 1, "train.epochs": 1,
                "train.batch_size": 8, "train.eval_steps": 4, "train.save_steps": 4, "train.logging_steps": 4,
                "train.precision": "fp32", "task.causal_lm.eval_rows": 16, "task.causal_lm.validation_rows": 8,
                "task.causal_lm.blimp": {"path": str(REPO / "data/raw/blimp/blimp-100.jsonl"), "pairs": 67},
                "task.causal_lm.crows_pairs": {"path": str(REPO / "data/raw/crows-pairs/crows_pairs_anonymized.csv"),
                                               "pairs": 18},
                "evaluate.base_cache_dir": str(project_dir / "cache"), **overrides}
    return load_config(project_dir, [f"{key}={json.dumps(value)}" for key, value in settings.items()])


def wait_for(condition, seconds: float, what: str, processes: list[subprocess.Popen], poll_s: float = 2):
    """condition()'s first true value, asked every poll_s; fails when seconds pass or one of processes exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"{process.args} exited with {process.returncode} while waiting for {what}"
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"no {what} within {seconds} s")


def healthy(url: str) -> bool:
    """Does a server answer its health endpoint's URL?"""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


MLFLOW_SERVER_START_S = 180    # a fresh database is migrated first


@contextmanager
def mlflow_server(database: str, workdir: Path) -> Iterator[str]:
    """An MLflow tracking server on a database of the PostgreSQL server (or on a store's URI, sqlite:///...), on a
    free loopback port, its artifacts in workdir/artifacts (a path its clients on this machine write to directly)
    and its log in workdir/server.log; yields its URL and stops it afterwards."""
    port = free_port()
    log = workdir / "server.log"
    backend = database if "://" in database else f"{POSTGRES}/{database}"
    with log.open("w") as output:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
             "--default-artifact-root", str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url), MLFLOW_SERVER_START_S, f"an answer from the MLflow server (its log: {log})",
                 [server], poll_s=0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:   # its workers wait for idle connections to close
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def chromium():
    """Debian's Chromium, headless, driven through its ChromeDriver by Selenium (.ci/run installs both). One per test:
    a browser left open on a live page (the Prefect UI polls its API) spends half a core until the session ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Debian's browser with "
                    "`apt-get install chromium chromium-driver` (as .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()
