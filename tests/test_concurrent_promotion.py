"""Two promotions at the same moment, in two processes, against an MLflow tracking server on PostgreSQL: one
champion (the better of the two), both moves in the history, no version lost."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.governance.aliases import LOCK_SUFFIX, alias_history
from pipeline.governance.registration import Candidate, register_candidate
from pipeline.governance.store import connect
from pipeline.governance.versions import champion_version
from pipeline.config import load_config
from tests.conftest import make_project, mlflow_server, scratch_database


@pytest.fixture
def tracking_server(tmp_path):
    """A scratch database and an MLflow server on it; both gone afterwards."""
    with scratch_database("tg_promotion") as database, mlflow_server(database, tmp_path) as url:
        yield url


PROMOTE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.governance.aliases import LOCK_SUFFIX, alias_history
    from pipeline.governance.registration import Candidate, register_candidate
    from pipeline.governance.store import connect, tracking_uri
    from pipeline.governance.versions import champion_version, find_version
    from pipeline.config import load_config
    from pipeline.governance.promotion import promote_candidate
    from pipeline.data.split import read_split

    project, uri, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    config = load_config(project)
    candidate = find_version(connect(config), uri)
    test = read_split(config.path("data/splits/test.csv"))
    (project / f"ready-{name}").touch()
    while not (project / "go").exists():
        time.sleep(0.01)
    result = promote_candidate(config, candidate, "same", test, project / name, f"flow {name}")
    print(result.alias)
""")


def test_two_promotions_at_once_end_with_one_champion_the_better_one(tmp_path, tracking_server, tiny_models):
    project = make_project(tmp_path / "project", parts=("sst2",), registry={"tracking_uri": tracking_server},
                           gates={"min_accuracy": 0.5, "lock": {"lease_s": 600, "wait_s": 120, "poll_s": 0.2}})
    from pipeline.data.split import write_splits

    config = load_config(project)
    write_splits(config)
    versions = {}
    for name, accuracy in (("worse", 0.80), ("better", 0.90)):
        candidate = Candidate(model_dir=tiny_models["trained"], params={}, metrics={"test_accuracy": accuracy},
                                       tags={"data_version": "same"}, artifacts=[])
        versions[name] = register_candidate(connect(config), candidate).version

    flows = {name: subprocess.Popen([sys.executable, "-c", PROMOTE, str(project), f"models:/tunegate-sst2/{version}",
                                     name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, version in versions.items()}
    while not all((project / f"ready-{name}").exists() for name in flows):
        assert all(flow.poll() is None for flow in flows.values()), [f.communicate() for f in flows.values()]
        time.sleep(0.05)
    (project / "go").touch()
    outcomes = {}
    for name, flow in flows.items():
        out, err = flow.communicate(timeout=240)
        assert flow.returncode == 0, err[-3000:]
        outcomes[name] = out.split()[-1]

    assert champion_version(connect(config)).version == versions["better"]
    assert outcomes["better"] == "champion"
    assert outcomes["worse"] in ("champion", "challenger")    # champion only if it went first
    history = alias_history(connect(config))
    assert sorted(move.to_version for move in history) == sorted(versions.values())
    assert {move.by for move in history} == {"flow worse", "flow better"}
    if outcomes["worse"] == "champion":   # it went first and was then beaten: the second move says from whom
        assert [(m.alias, m.from_version) for m in history] == [("champion", None),
                                                                ("champion", versions["worse"])]
    client = connect(config).client
    assert len(client.search_model_versions("name = 'tunegate-sst2'")) == 2
    assert client.search_registered_models(f"name = 'tunegate-sst2{LOCK_SUFFIX}'") == []
