from pipeline.config import GatesConfig
from pipeline.gates import decide

GATES = GatesConfig(min_accuracy=0.85, champion_tolerance=0.0)


def test_first_candidate_above_the_floor_is_promoted():
    decision = decide({"test_accuracy": 0.86}, None, GATES)
    assert decision.promote
    assert decision.reasons == ["accuracy 0.8600 ≥ floor 0.8500", "no current champion"]


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
    gates = GatesConfig(min_accuracy=0.85, champion_tolerance=0.02)
    decision = decide({"test_accuracy": 0.86}, {"test_accuracy": 0.87}, gates)
    assert decision.promote
    assert "− tolerance 0.02" in decision.summary
