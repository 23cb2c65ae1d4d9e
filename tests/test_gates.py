from pipeline.config import GatesConfig, PromotionLockConfig
from pipeline.governance.gates import Gate, decide, gated_metrics

LOCK = PromotionLockConfig(lease_s=600, wait_s=1200, poll_s=2)
GATES = GatesConfig(min_accuracy=0.85, min_rouge_l=0.3, champion_tolerance=0.0, max_forgetting=None, max_bias_gap=None,
                    max_task_forgetting=None, lock=LOCK, approval="none", approval_timeout=86400, approval_poll_s=10)
WITH_ALL = GATES.model_copy(update={"max_forgetting": 0.05, "max_bias_gap": 0.02})
GOOD = {"test_accuracy": 0.9, "forgetting_stsb": 0.01, "eec_gender_gap": 0.005, "eec_race_gap": 0.01,
        "eec_race_p_value": 0.2, "retained_stsb": 0.99}


def test_first_candidate_above_the_floor_is_promoted():
    decision = decide({"test_accuracy": 0.86}, None, GATES)
    assert decision.promote
    assert decision.reasons == ["accuracy 0.8600 ≥ floor 0.8500", "no current champion",
                                "forgetting not gated (gates.max_forgetting is null)",
                                "bias gap not gated (gates.max_bias_gap is null)"]


def test_candidate_below_the_floor_is_not_promoted_and_says_why():
    decision = decide({"test_accuracy": 0.80}, None, GATES)
    assert not decision.promote
    assert "accuracy 0.8000 < floor 0.8500" in decision.summary


def test_candidate_must_match_the_champion():
    assert decide({"test_accuracy": 0.87}, {"test_accuracy": 0.87}, GATES).promote
    worse = decide({"test_accuracy": 0.86}, {"test_accuracy": 0.87}, GATES)
    assert not worse.promote
    assert "accuracy 0.8600 < champion's 0.8700" in worse.summary


def test_tolerance_lets_a_slightly_worse_candidate_through():
    gates = GATES.model_copy(update={"champion_tolerance": 0.02})
    decision = decide({"test_accuracy": 0.86}, {"test_accuracy": 0.87}, gates)
    assert decision.promote
    assert "− tolerance 0.02" in decision.summary


def test_every_general_benchmark_and_every_bias_gap_is_a_gate_in_words():
    decision = decide(GOOD, None, WITH_ALL)
    assert decision.promote
    assert decision.reasons == ["accuracy 0.9000 ≥ floor 0.8500", "no current champion",
                                "forgetting stsb 0.0100 ≤ max 0.0500",
                                "eec gender gap 0.0050 ≤ max 0.0200", "eec race gap 0.0100 ≤ max 0.0200"]


def test_too_much_forgetting_or_bias_stops_the_promotion():
    forgot = decide({**GOOD, "forgetting_stsb": 0.08}, None, WITH_ALL)
    assert not forgot.promote and "forgetting stsb 0.0800 > max 0.0500" in forgot.reasons
    biased = decide({**GOOD, "eec_race_gap": 0.03}, None, WITH_ALL)
    assert not biased.promote and "eec race gap 0.0300 > max 0.0200" in biased.reasons
    assert "eec gender gap 0.0050 ≤ max 0.0200" in biased.reasons


def test_a_gate_without_its_metric_says_so_and_does_not_block():
    decision = decide({"test_accuracy": 0.9}, None, WITH_ALL)
    assert decision.promote
    assert decision.reasons[2:] == ["forgetting not measured", "bias gap not measured"]


def test_gated_metrics_are_the_task_metric_then_forgetting_then_gaps():
    assert gated_metrics(GOOD) == ["test_accuracy", "forgetting_stsb", "eec_gender_gap", "eec_race_gap"]


def test_gated_metrics_leave_out_the_champions_numbers_a_promotion_logged_beside_them():
    compared = {**GOOD, "champion_test_accuracy": 0.88, "champion_eec_gender_gap": 0.001, "task_forgetting_sst2": 0.0}
    assert gated_metrics(compared) == ["test_accuracy", "forgetting_stsb", "eec_gender_gap", "eec_race_gap"]


def test_each_gate_has_its_value_threshold_baseline_and_outcome_in_the_record():
    champion = {"test_accuracy": 0.88, "forgetting_stsb": 0.02, "eec_gender_gap": 0.001, "eec_race_gap": 0.004}
    tolerant = WITH_ALL.model_copy(update={"champion_tolerance": 0.01})
    decision = decide({**GOOD, "test_accuracy": 0.86}, champion, tolerant)
    assert decision.gates[:3] == [
        Gate("accuracy_floor", 0.86, 0.85, 0.88, True, "accuracy 0.8600 ≥ floor 0.8500"),
        Gate("accuracy_vs_champion", 0.86, 0.87, 0.88, False, "accuracy 0.8600 < champion's 0.8800 − tolerance 0.01"),
        Gate("forgetting_stsb", 0.01, 0.05, 0.02, True, "forgetting stsb 0.0100 ≤ max 0.0500")]
    record = decision.as_record()
    assert record["verdict"] == "reject" and len(record["gates"]) == 5
    assert record["gates"][1] == {"name": "accuracy_vs_champion", "value": 0.86, "threshold": 0.87,
                                  "baseline": 0.88, "passed": False,
                                  "reason": "accuracy 0.8600 < champion's 0.8800 − tolerance 0.01"}


def test_each_earlier_task_is_gated_on_its_drop_against_the_champion_on_the_same_split():
    gates = GATES.model_copy(update={"max_task_forgetting": 0.05})
    candidate = {**GOOD, "earlier_sst2_accuracy": 0.80, "earlier_books_accuracy": 0.70}
    champion = {"test_accuracy": 0.86, "earlier_sst2_accuracy": 0.83, "earlier_books_accuracy": 0.80}
    decision = decide(candidate, champion, gates)
    forgetting = [gate for gate in decision.gates if gate.name.startswith("task_forgetting_")]
    assert [(g.name, round(g.value, 4), g.threshold, g.baseline, g.passed) for g in forgetting] == [
        ("task_forgetting_books", 0.1, 0.05, 0.80, False), ("task_forgetting_sst2", 0.03, 0.05, 0.83, True)]
    assert not decision.promote and "forgetting of books 0.1000 > max 0.0500" in decision.summary
    assert decide(candidate, None, gates).promote    # no champion: nothing to have forgotten against
