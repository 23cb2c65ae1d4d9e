"""Evaluation: each metric against a case computed by hand, forgetting, the counterfactual pairing,
the base-score cache, missing files, and the whole suite on a real model and small slices."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation import benchmarks
from pipeline.config import load_config
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation.suites import benchmark_files, compute_metrics
from pipeline.tasks import evaluate_model
from pipeline.tasks.classification.evaluation import base_general_scores, general_scores
from pipeline.evaluation.bias import counterfactual_gaps, counterfactual_metrics, group_metrics, group_summary_metrics
from pipeline.training.models import load_classifier, load_tokenizer, resolve_model_path
from pipeline.data.split import LABEL, TEXT
from tests.conftest import REPO, make_project

# Five predictions, by hand: predicted classes 0, 0, 1, 1, 1 against references 0, 1, 1, 0, 1.
PROBS = np.array([[0.92, 0.08], [0.62, 0.38], [0.34, 0.66], [0.25, 0.75], [0.45, 0.55]])
REFERENCES = np.array([0, 1, 1, 0, 1])


def settings(**changes):
    return load_config(REPO).evaluate.model_copy(update=changes)


def test_task_metrics_match_a_hand_computed_case():
    scores = compute_metrics(settings(metrics=["accuracy", "f1", "precision_recall", "ece"]), PROBS, REFERENCES)
    # correct: 1, 0, 1, 0, 1
    assert scores["accuracy"] == pytest.approx(3 / 5)
    # class 0: predicted at rows 0, 1 (row 0 right); present at rows 0, 3.
    # class 1: predicted at rows 2, 3, 4 (rows 2, 4 right); present at rows 1, 2, 4.
    assert scores["precision_0"] == pytest.approx(1 / 2) and scores["recall_0"] == pytest.approx(1 / 2)
    assert scores["precision_1"] == pytest.approx(2 / 3) and scores["recall_1"] == pytest.approx(2 / 3)
    assert scores["f1_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # ECE, 10 bins of the top probability: 0.92 right; 0.62 wrong and 0.66 right (one bin);
    # 0.75 wrong; 0.55 right.
    expected = (1 * abs(1 - 0.92) + 2 * abs(0.5 - 0.64) + 1 * abs(0 - 0.75) + 1 * abs(1 - 0.55)) / 5
    assert scores["ece"] == pytest.approx(expected) == pytest.approx(0.312)


def test_ece_bins_come_from_metric_options():
    # One bin: |accuracy 0.6 - mean confidence 0.7|.
    scores = compute_metrics(settings(metrics=["ece"], metric_options={"ece": {"n_bins": 1}}), PROBS, REFERENCES)
    assert scores["ece"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"evaluate.metric_options.ece .*n_bins must be a positive integer"):
        compute_metrics(settings(metrics=["ece"], metric_options={"ece": {"n_bins": 0}}), PROBS, REFERENCES)


def test_a_perfectly_confident_right_model_has_no_calibration_error():
    scores = compute_metrics(settings(metrics=["ece"]), np.eye(2)[REFERENCES], REFERENCES)
    assert scores["ece"] == 0.0


def test_forgetting_is_base_minus_candidate_and_retained_their_ratio():
    assert benchmarks.forgetting("stsb", base=0.8, candidate=0.7) == pytest.approx(
        {"forgetting_stsb": 0.1, "retained_stsb": 0.875})
    improved = benchmarks.forgetting("stsb", base=0.5, candidate=0.6)
    assert improved["forgetting_stsb"] == pytest.approx(-0.1) and improved["retained_stsb"] == pytest.approx(1.2)


def write_sts(path: Path) -> Path:
    # STS Benchmark format; the second line carries two extra source fields, as some real lines do.
    path.write_text("g\tf\t2012\t1\t5.0\tsame a\tsame b\n"
                    "g\tf\t2012\t2\t0.5\torthogonal a\torthogonal b\textra\tfields\n"
                    "g\tf\t2012\t3\t3.0\tdiagonal a\tdiagonal b\n", encoding="utf-8")
    return path


def test_sts_spearman_ranks_cosine_similarities_against_gold_scores(tmp_path):
    vectors = {"same a": [1, 0], "same b": [2, 0], "orthogonal a": [1, 0], "orthogonal b": [0, 1],
               "diagonal a": [1, 0], "diagonal b": [1, 1]}

    def embed(texts):
        return np.array([vectors[t] for t in texts], dtype=float)

    # cosines 1, 0, 0.707 -> ranks 3, 1, 2 against gold 5.0, 0.5, 3.0 -> ranks 3, 1, 2.
    path = write_sts(tmp_path / "sts.csv")
    assert benchmarks.sts_spearman(embed, path) == pytest.approx(1.0)
    # Swap the orthogonal and the diagonal pair's vectors: cosine ranks 3, 2, 1; d = 0, 1, 1;
    # rho = 1 - 6 * 2 / (3 * (9 - 1)) = 0.5.
    vectors["orthogonal b"], vectors["diagonal b"] = [1, 1], [0, 1]
    assert benchmarks.sts_spearman(embed, path) == pytest.approx(0.5)


def eec_frame() -> tuple[pd.DataFrame, np.ndarray]:
    """Hand-made counterfactual sentences and their positive-class probabilities.

    gender pairs (template, race): (T1, AA) 0.70 [mean of 0.65, 0.75] vs 0.6; (T1, European) 0.8 vs 0.6;
    (T2, none) 0.9 vs 0.6 -> differences 0.1, 0.2, 0.3.
    race pairs (template, gender): (T1, female) 0.70 vs 0.8; (T1, male) 0.6 vs 0.6 -> differences -0.1, 0.
    """
    rows = [("T1", "female", "African-American", 0.65), ("T1", "female", "African-American", 0.75),
            ("T1", "male", "African-American", 0.6), ("T1", "female", "European", 0.8),
            ("T1", "male", "European", 0.6), ("T2", "female", "", 0.9), ("T2", "male", "", 0.6)]
    frame = pd.DataFrame([{"Sentence": f"s{i}", "Template": t, "Emotion word": "happy", "Gender": g, "Race": r}
                          for i, (t, g, r, _) in enumerate(rows)])
    return frame, np.array([p for *_, p in rows])


def test_counterfactual_pairs_gaps_and_paired_t_test_match_hand_computation():
    counterfactual = load_config(REPO).evaluate.counterfactual
    frame, probs = eec_frame()
    gender, race = counterfactual_gaps(frame, probs, counterfactual)

    assert gender.pairs == 3
    assert gender.groups == pytest.approx({"female": (0.65 + 0.75 + 0.8 + 0.9) / 4, "male": 0.6})
    assert gender.gap == pytest.approx(0.2) and gender.mean_difference == pytest.approx(0.2)
    # Differences 0.1, 0.2, 0.3: t = 0.2 / (0.1 / sqrt 3) = sqrt 12 with 2 degrees of freedom, whose
    # CDF is 1/2 + t / (2 sqrt(2 + t^2)); two-sided p = 1 - sqrt(12 / 14).
    assert gender.p_value == pytest.approx(1 - math.sqrt(12 / 14))
    assert not gender.significant                      # 0.074 > alpha 0.05

    assert race.pairs == 2                             # the T2 sentences have no race
    assert race.groups == pytest.approx({"African-American": (0.65 + 0.75 + 0.6) / 3, "European": 0.7})
    assert race.gap == pytest.approx(0.05) and race.mean_difference == pytest.approx(-0.05)
    # Differences -0.1, 0: t = -1 with 1 degree of freedom (Cauchy): p = 2 * (1/2 - atan(1) / pi) = 0.5.
    assert race.p_value == pytest.approx(0.5)

    metrics = counterfactual_metrics("eec", [gender, race])
    assert metrics["eec_gender_gap"] == pytest.approx(0.2) and metrics["eec_race_p_value"] == pytest.approx(0.5)
    assert metrics["eec_race_african_american_mean"] == pytest.approx(2 / 3)


def test_identical_probabilities_give_no_gap_and_no_p_value():
    counterfactual = load_config(REPO).evaluate.counterfactual
    frame, probs = eec_frame()
    gender, race = counterfactual_gaps(frame, np.full_like(probs, 0.5), counterfactual)
    assert gender.gap == race.gap == 0.0
    assert math.isnan(gender.p_value) and not gender.significant


def test_group_metrics_match_a_hand_computed_case():
    # Rows 0-3 mention women, 4-7 men, 8 both (left out of gender), 9 a religion group too small to compare.
    w, m = [True] * 4 + [False] * 4 + [True, False], [False] * 4 + [True] * 4 + [True, False]
    mentions = pd.DataFrame({("gender", "women"): w, ("gender", "men"): m,
                             ("religion", "muslim"): [False] * 9 + [True], ("religion", "jewish"): [False] * 10})
    true_positive = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 0])
    predicted_positive = np.array([1, 0, 0, 0, 1, 1, 0, 0, 0, 1])
    gender, religion = group_metrics(mentions, true_positive, predicted_positive, min_rows=4)

    assert gender.rows == {"women": 4, "men": 4}
    # women: right on rows 0, 2, 3; one positive prediction; TPR 1/2, FPR 0.
    # men: all right; two positive predictions; TPR 1, FPR 0.
    assert gender.by_group == {"women": {"accuracy": 0.75, "selection_rate": 0.25},   # exact in binary
                               "men": {"accuracy": 1.0, "selection_rate": 0.5}}
    assert gender.dp_difference == pytest.approx(0.25)          # |0.25 - 0.5|
    assert gender.eo_difference == pytest.approx(0.5)           # max(|1/2 - 1|, |0 - 0|)
    assert religion.rows == {"muslim": 1} and religion.dp_difference is None and religion.by_group == {}
    assert group_summary_metrics([gender, religion]) == pytest.approx({
        "group_gender_dp_difference": 0.25, "group_gender_eo_difference": 0.5,
        "group_dp_difference": 0.25, "group_eo_difference": 0.5})


@pytest.mark.parametrize("evaluate, key", [
    ({"general": [{"name": "stsb", "kind": "sts", "path": "data/raw/stsb/nope.csv"}]}, "evaluate.general[0].path"),
    ({"earlier_tasks": [{"name": "b1", "path": "data/old.tsv", "text_column": "sentence", "label_column": "label"}]},
     "evaluate.earlier_tasks[0].path"),
])
def test_a_missing_benchmark_file_names_the_file_and_the_params_key(tmp_path, evaluate, key):
    config = load_config(make_project(tmp_path, parts=("benchmarks",), evaluate=evaluate))
    message = rf"Benchmark file {tmp_path}/data/\S+ not found: set {re.escape(key)} in params.yaml"
    with pytest.raises(DataError, match=message):
        benchmark_files(config)


def test_a_missing_counterfactual_corpus_names_its_key(tmp_path):
    project = make_project(tmp_path, parts=("benchmarks",))
    (project / "data/raw/eec/Equity-Evaluation-Corpus.csv").unlink()
    with pytest.raises(DataError, match=r"Equity-Evaluation-Corpus.csv not found: set evaluate.counterfactual.path"):
        benchmark_files(load_config(project))


def test_an_unknown_benchmark_kind_lists_the_known_ones(tmp_path):
    glue = {"name": "x", "kind": "glue", "path": "data/raw/stsb/sts-test.csv"}
    config = load_config(make_project(tmp_path, parts=("benchmarks",), evaluate={"general": [glue]}))
    with pytest.raises(ConfigError, match="evaluate.general\\[0\\].kind 'glue' is unknown; known kinds: sts"):
        benchmark_files(config)


def test_base_scores_are_computed_once_and_then_read_from_the_cache(tmp_path):
    config = load_config(make_project(tmp_path, parts=("benchmarks",)))
    paths = benchmark_files(config)
    first = base_general_scores(config, paths)
    base_dir = resolve_model_path(config.model.base)
    direct = general_scores(config, load_classifier(base_dir).base_model, load_tokenizer(base_dir), paths)
    assert first == pytest.approx(direct)
    (cache_file,) = config.path(config.evaluate.base_cache_dir).glob("stsb-*.json")
    assert json.loads(cache_file.read_text())["score"] == pytest.approx(direct["stsb"])

    # A hit reads the file and loads no model: the value written there comes back.
    record = json.loads(cache_file.read_text())
    cache_file.write_text(json.dumps({**record, "score": 0.123}))
    assert base_general_scores(config, paths) == {"stsb": 0.123}
    # Another benchmark file is another key.
    sts = paths["evaluate.general[0].path"]
    sts.write_text("".join(sts.read_text().splitlines(keepends=True)[:20]))
    assert base_general_scores(config, paths)["stsb"] != 0.123
    assert len(list(cache_file.parent.glob("stsb-*.json"))) == 2


def test_the_whole_suite_on_the_base_model_reports_no_forgetting(tmp_path):
    """The base model as its own candidate: same encoder, so forgetting is exactly 0; every part reported."""
    project = make_project(tmp_path, parts=("sst2", "benchmarks"), evaluate={"earlier_tasks": [
        {"name": "dev", "path": "data/raw/sst2/dev.tsv", "text_column": "sentence", "label_column": "label"}]})
    # The 200 test rows of the slice mention men 17 times and women 3 times (alone): compare groups of 3.
    config = load_config(project, ["audit.bias.min_slice_rows=3"])
    test = pd.read_csv(project / "data/raw/sst2/test.tsv", sep="\t").rename(columns={"sentence": TEXT, "label": LABEL})
    report = evaluate_model(config, resolve_model_path(config.model.base), test, tmp_path / "report")

    metrics = report.metrics
    assert metrics["forgetting_stsb"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["retained_stsb"] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < metrics["general_stsb_spearman"] < 1
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["test_ece"] <= 1
    assert {"eec_gender_gap", "eec_gender_p_value", "eec_race_gap", "eec_gender_female_mean"} <= set(metrics)
    assert 0 <= metrics["earlier_dev_accuracy"] <= 1 and "earlier_dev_ece" in metrics

    saved = json.loads(report.path.read_text())
    assert np.array(saved["task"]["confusion_matrix"]).sum() == 200
    gender = saved["groups"]["categories"][0]
    assert gender["category"] == "gender" and gender["rows"] == {"men": 17, "women": 3}
    assert set(gender["by_group"]) == {"men", "women"}
    assert metrics["group_gender_dp_difference"] == metrics["group_dp_difference"] == pytest.approx(
        abs(gender["by_group"]["men"]["selection_rate"] - gender["by_group"]["women"]["selection_rate"]))
    assert saved["general"]["stsb"]["base"] == pytest.approx(saved["general"]["stsb"]["candidate"], abs=1e-6)
    assert [a["pairs"] for a in saved["counterfactual"]["attributes"]] == [6, 4]
    assert {p.name for p in report.artifacts} == {"evaluation.json", "evaluation.html", "confusion_matrix.png",
                                                  "groups.png", "general_base_vs_candidate.png",
                                                  "counterfactual_groups.png"}
    html = (tmp_path / "report/evaluation.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert f"{metrics['eec_gender_gap']:.4f}" in html and f"{metrics['test_accuracy']:.4f}" in html
