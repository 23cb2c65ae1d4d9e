"""The model card as a reviewer meets it: the version's description in the registry leads with the gate decision,
the metrics, forgetting and the bias gaps, and the MLflow UI shows them (headless Chromium); the long table of the
data's identity slices stays in the card's artifact. The slices are the audit's own, of the repo's whole SST-2."""
from __future__ import annotations

import pandas as pd
import pytest
from selenium.webdriver.common.by import By

from pipeline.audit.slices import find_mentions, load_lexicon, slice_table
from pipeline.config import load_config
from pipeline.governance import gates
from pipeline.governance.model_card import CardInputs, build_card
from pipeline.governance.registration import (DESCRIPTION_LIMIT, Candidate, attach_model_card, card_description,
                                              register_candidate)
from pipeline.governance.store import connect
from pipeline.governance.versions import MODEL_CARD_ARTIFACT
from tests.conftest import REPO, make_project, mlflow_server, wait_for

MODEL = "tunegate-sst2"
METRICS = {"test_accuracy": 0.9106, "test_f1": 0.9121, "forgetting_stsb": 0.0123, "eec_gender_gap": 0.0213,
           "eec_race_gap": 0.0178, "group_gender_dp_difference": 0.0531}
GENERAL = {"stsb": {"score": "spearman", "base": 0.8203, "candidate": 0.8080}}
SLICES_HEADING = "## Identity slices of the training data"


def sst2_audit() -> dict:
    """The audit's record of slices of the repo's SST-2 files, as pipeline.audit.report.as_json writes it."""
    files = []
    for name in ("train", "dev", "test"):
        frame = pd.read_csv(REPO / "data/raw/sst2" / f"{name}.tsv", sep="\t", keep_default_na=False, dtype=str)
        table = slice_table(find_mentions(frame["sentence"], load_lexicon(None)), frame["label"] == "1")
        files.append({"source": f"data/raw/sst2/{name}.tsv", "checks": [], "slices": table.to_dict("records")})
    return {"files": files}


@pytest.fixture(scope="module")
def carded(tmp_path_factory, tiny_models):
    """A registered version with the card of a promoted run, in a project's sqlite store."""
    project = make_project(tmp_path_factory.mktemp("card-ui") / "project", parts=())
    config = load_config(project)
    store = connect(config)
    version = register_candidate(store, Candidate(model_dir=tiny_models["trained"], params=config.as_dict(),
                                                  metrics=METRICS, tags={"method": "lora"}, artifacts=[]))
    decision = gates.decide(METRICS, None, config.gates)
    card = str(build_card(config, CardInputs(
        version=version.uri, lineage={}, data_version="3f2a", split_rows={"train": 60614, "validation": 6735,
                                                                          "test": 872},
        metrics=METRICS, evaluation={"general": GENERAL}, audit=sst2_audit(),
        decision={**decision.as_record(), "alias": "champion", "champion": None})))
    attach_model_card(store, version, card)
    return config, version, card


# What a reviewer decides on, in the order the description shows it: decision, metrics, forgetting, bias gaps.
REVIEWERS_PART = ["## Gate decision", "**champion**: the gates' verdict was promote", "| accuracy_floor |",
                  "| test_accuracy | 0.9106 |", "| stsb | spearman | 0.8203 | 0.8080 | 0.0123 |",
                  "| eec_gender_gap | 0.0213 |", "| group_gender_dp_difference | 0.0531 |"]


def test_the_description_leads_with_the_decision_and_leaves_the_slice_table_to_the_artifact(carded):
    config, version, card = carded
    store = connect(config)
    description = store.client.get_model_version(MODEL, version.version).description
    assert description == card_description(card) and len(description) <= DESCRIPTION_LIMIT < len(card)
    assert description.startswith(f"# {version.uri}\n")   # the card's YAML metadata is for the Hub, not the UI
    positions = [description.find(text) for text in REVIEWERS_PART]
    assert -1 not in positions and positions == sorted(positions), dict(zip(REVIEWERS_PART, positions))
    assert SLICES_HEADING not in description and "| train.tsv | gender: women |" not in description
    assert description.rstrip().endswith(f"is the run's artifact {MODEL_CARD_ARTIFACT})")
    # the whole card, the slices of all three files included, is the run's artifact
    logged = store.read_text(version.run_id, MODEL_CARD_ARTIFACT)
    assert logged == card and SLICES_HEADING in card
    assert all(f"| {name}.tsv | gender: women |" in card for name in ("train", "dev", "test"))


def test_the_mlflow_ui_shows_the_decision_and_the_metrics(carded, chromium, tmp_path):
    config, version, _ = carded
    with mlflow_server(connect(config).uri, tmp_path) as url:
        chromium.get(f"{url}/#/models/{MODEL}/versions/{version.version}")
        text = wait_for(lambda: (body := chromium.find_element(By.TAG_NAME, "body").text) and
                        "Gate decision" in body and body, 60, "the model card in the version's page", [], poll_s=1)
        title = chromium.find_element(By.XPATH, f"//h1[normalize-space()='{version.uri}']")
        chromium.execute_script("arguments[0].scrollIntoView()", title)
        chromium.save_screenshot(str(tmp_path / "model-card.png"))
    assert "base_model:" not in text
    assert "champion: the gates' verdict was promote, with no champion to compare with." in text
    for shown in ("test_accuracy", "0.9106", "forgetting", "eec_gender_gap", "0.0213"):
        assert shown in text, shown
    assert "Identity slices of the training data" not in text
