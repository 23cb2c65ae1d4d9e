"""A version registered by the code before the restructure (its serving classes then in pipeline/registry.py, by whose
class path MLflow pickled them) still loads and predicts with the code of today."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap

import pandas as pd

from pipeline.config import load_config
from pipeline.governance.registration import Candidate, register_candidate
from pipeline.governance.store import connect
from pipeline.governance.versions import registered_model_dir
from tests.conftest import REPO, load_registered, make_project

BEFORE_RESTRUCTURE = "5b483b2"   # main before pipeline/ became subpackages
REGISTER_WITH_OLD_CODE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline import registry
    from pipeline.config import load_config

    assert registry.__file__.startswith(sys.argv[3]), registry.__file__   # the old code, not today's
    config = load_config(Path(sys.argv[1]))
    candidate = registry.Candidate(model_dir=Path(sys.argv[2]), params={}, metrics={}, tags={}, artifacts=[])
    print(registry.register_candidate(config, candidate).uri)
""")
TEXTS = pd.DataFrame({"text": ["a moving, funny film", "a dull mess", "fine"]})


def test_a_version_logged_before_the_restructure_loads_and_predicts_as_one_logged_today(tmp_path, tiny_models):
    old_code = tmp_path / "old-code"
    old_code.mkdir()
    archive = subprocess.run(["git", "archive", BEFORE_RESTRUCTURE, "pipeline"], cwd=REPO, capture_output=True,
                             check=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(old_code, filter="data")
    project = make_project(tmp_path / "project", parts=())   # params.yaml: a registration needs no data
    # the old code reads the params.yaml of its own day (today's has keys it refuses), on the same tracking store
    old_project = tmp_path / "old-project"
    old_project.mkdir()
    (old_project / "params.yaml").write_bytes(subprocess.run(
        ["git", "show", f"{BEFORE_RESTRUCTURE}:params.yaml"], cwd=REPO, capture_output=True, check=True).stdout)
    (project / "mlflow").mkdir(exist_ok=True)
    (old_project / "mlflow").symlink_to(project / "mlflow")
    logged = subprocess.run([sys.executable, "-c", REGISTER_WITH_OLD_CODE, str(old_project),
                             str(tiny_models["trained"]),
                             str(old_code)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(old_code)},
                            capture_output=True, text=True)
    assert logged.returncode == 0, logged.stderr[-3000:]
    old_uri = logged.stdout.strip().splitlines()[-1]

    config = load_config(project)
    store = connect(config)
    pickled = (registered_model_dir(store, old_uri) / "python_model.pkl").read_bytes()
    assert b"pipeline.registry" in pickled and b"TextClassifier" in pickled   # the class path of then
    today = register_candidate(store, Candidate(model_dir=tiny_models["trained"], params={}, metrics={}, tags={},
                                                artifacts=[]))
    before = load_registered(config, old_uri).predict(TEXTS)
    pd.testing.assert_frame_equal(before, load_registered(config, today.uri).predict(TEXTS))
    assert set(before["label"]) <= {"negative", "positive"}
