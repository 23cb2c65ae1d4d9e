import json
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import DataError
from pipeline.data.split import make_splits
from pipeline.data.versioning import SPLIT_STAGE
from tests.conftest import REPO, make_project


def test_split_is_deterministic_for_a_seed(tmp_path):
    config = load_config(make_project(tmp_path, parts=("sst2",), split={"max_train_rows": 100}))
    first, second = make_splits(config), make_splits(config)
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])


def test_another_seed_gives_another_sample(tmp_path):
    project = make_project(tmp_path, parts=("sst2",), split={"max_train_rows": 100})
    first = make_splits(load_config(project))["train"]
    make_project(project, parts=(), split={"max_train_rows": 100, "seed": 7})   # params.yaml anew, same data
    assert not first.equals(make_splits(load_config(project))["train"])


def test_cap_keeps_the_label_balance(tmp_path):
    splits = make_splits(load_config(make_project(tmp_path, parts=("sst2",), split={"max_train_rows": 100})))
    assert len(splits["train"]) == 100
    assert splits["train"]["label"].value_counts().to_dict() == {0: 50, 1: 50}
    assert len(splits["validation"]) == 100 and len(splits["test"]) == 200


def test_missing_validation_and_test_are_carved_out_of_train_stratified(tmp_path):
    config = load_config(make_project(tmp_path, parts=("sst2",), data={"validation": None, "test": None},
                                      split={"validation_fraction": 0.1, "test_fraction": 0.2}))
    splits = make_splits(config)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (288, 32, 80)
    assert splits["test"]["label"].value_counts().to_dict() == {0: 40, 1: 40}
    assert sum(len(f) for f in splits.values()) == 400


def test_labels_are_read_as_the_configured_integers(tmp_path):
    splits = make_splits(load_config(make_project(tmp_path, parts=("sst2",))))
    assert splits["train"]["label"].dtype.kind == "i"
    assert set(splits["train"]["label"]) == {0, 1}


def test_a_label_outside_the_set_names_the_values_and_the_row(tmp_path):
    project = make_project(tmp_path, parts=("sst2",))
    train = project / "data/raw/sst2/train.tsv"
    frame = pd.read_csv(train, sep="\t", dtype=str)
    frame.loc[3, "label"] = "positive"
    frame.to_csv(train, sep="\t", index=False)
    with pytest.raises(DataError, match=r"1 label\(s\) outside the label set \[0, 1\], e.g. \['positive'\] \(first at data row 4\)"):
        make_splits(load_config(project))


def test_a_fresh_clone_has_the_split_stage_dvc_lock_records(tmp_path):
    """The committed dvc.lock records the committed raw data, split code and params: a fresh clone's first run
    reproduces the splits without rewriting it, so that run's lineage is not dirty. Only the splits themselves,
    which DVC and not git keeps, are missing from a clone."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    status = subprocess.run([sys.executable, "-m", "dvc", "status", SPLIT_STAGE, "--json"], cwd=clone,
                            capture_output=True, text=True, check=True).stdout
    changes = json.loads(status).get(SPLIT_STAGE, [])
    stale = [change for change in changes if not (isinstance(change, dict) and set(change) == {"changed outs"})]
    assert stale == [], f"dvc.lock is stale: run `dvc repro {SPLIT_STAGE}` and commit dvc.lock ({stale})"
