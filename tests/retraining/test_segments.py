import numpy as np
import pytest

from retraining.ml.params import TrainingParams
from retraining.ml.segments import SEGMENTS, segment_names, user_history_counts
from retraining.ml.split import split_compute
from retraining.services.gate import MIN_COMPARISON_USERS, gate_decide
from retraining.services.training import model_train
from tests.retraining.factories import START, RawDataset, RawEvent, event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)
GATE = dict(min_relative_gain=0.01, guardrail_tolerance=0.05, bootstrap_tolerance=0.005, bootstrap_samples=1000)


def _log(per_user_counts):
    events = [
        RawEvent(user, user, "view", None, START + i)
        for user, count in enumerate(per_user_counts)
        for i in range(count)
    ]
    return event_log_from(RawDataset(len(per_user_counts), [()] * len(per_user_counts), events))


def test_users_are_segmented_by_their_training_events_before_the_holdout_with_inclusive_boundaries():
    # 5 events hold out 1 (4 in training), 11 → 9, 12 → 10, 61 → 49, 62 → 50; 3 events: no holdout at all.
    log = _log([5, 11, 12, 61, 62, 3])
    split = split_compute(log, PARAMS)
    counts = user_history_counts(log, split, users=np.arange(5))
    np.testing.assert_array_equal(counts, [4, 9, 10, 49, 50])
    assert segment_names(counts).tolist() == ["new", "new", "light", "light", "heavy"]
    assert segment_names(np.array([0, 100_000])).tolist() == ["new", "heavy"]


def _segment(name, *, candidate, champion):
    bounds = {segment: f"{low}+" if high is None else f"{low}–{high}" for segment, low, high in SEGMENTS}
    return {"training_events": bounds[name], "candidate": {"ndcg@10": candidate}, "champion": {"ndcg@10": champion}}


def _decide(groups):
    """groups: (segment, users, per-user NDCG gain of the candidate); the champion scores 0.3 for everyone."""
    rng = np.random.default_rng(3)
    names = np.concatenate([[name] * users for name, users, _ in groups]).astype(object)
    champion = np.full(len(names), 0.3)
    candidate = champion + np.concatenate([gain + rng.normal(0, 0.02, users) for _, users, gain in groups])
    segments = {
        name: _segment(name, candidate=candidate[names == name].mean() if users else 0.0, champion=0.3)
        for name, users, _ in groups
    }
    overall = {"ndcg@10": candidate.mean(), "recall@10": 0.1, "coverage@10": 0.2}
    return gate_decide(
        candidate=overall,
        popularity={"ndcg@10": 0.1},
        champion={**overall, "ndcg@10": 0.3},
        candidate_user_ndcg=candidate,
        champion_user_ndcg=champion,
        segments=segments,
        user_segments=names,
        **GATE,
    )


def test_a_candidate_better_overall_but_clearly_worse_on_one_segment_is_refused_with_that_segments_numbers():
    decision = _decide([("light", 40, -0.10), ("heavy", 200, +0.06)])
    assert decision.numbers["ndcg_difference"]["ci95_low"] > 0  # better overall, beyond noise
    assert not decision.passed
    assert len(decision.failures) == 1
    failure, light = decision.failures[0], decision.numbers["segments"]["light"]
    candidate = light["candidate"]["ndcg@10"]
    assert failure.startswith(f"segment light (10–49 training events, 40 users): NDCG@10 {candidate:.4f} vs champion")
    assert "significantly worse" in failure
    light = light["ndcg_difference"]
    assert light["ci95_high"] < -0.005 and f"[{light['ci95_low']:+.4f}, {light['ci95_high']:+.4f}]" in failure
    assert any(reason.startswith("segment heavy (50+ training events, 200 users)") for reason in decision.reasons)


def test_a_segment_too_small_to_judge_is_skipped_and_the_decision_says_so():
    small = MIN_COMPARISON_USERS - 1
    decision = _decide([("new", small, -0.2), ("heavy", 300, +0.06)])
    assert decision.passed, decision.failures
    assert f"segment new (0–9 training events, {small} users): not checked, fewer than 20 users" in decision.reasons
    assert decision.numbers["segments"]["new"]["ndcg_difference"] == {"skipped": "fewer than 20 users"}
    empty = _decide([("new", 0, 0.0), ("heavy", 300, +0.06)])
    assert "segment new (0–9 training events, 0 users): not checked, no users" in empty.reasons


def test_a_segment_worse_only_within_noise_does_not_refuse():
    decision = _decide([("light", 40, -0.004), ("heavy", 200, +0.06)])
    assert decision.passed, decision.failures
    assert decision.numbers["segments"]["light"]["ndcg_difference"]["ci95_high"] > -0.005


@pytest.fixture(scope="module")
def trained():
    log = event_log_from(learnable_dataset(users=200, per_user=50))
    return model_train(output_dir=None, log=log, progress=None, params=PARAMS)


def test_training_reports_every_model_per_segment_and_the_segments_add_up_to_the_whole_holdout(trained):
    segments = trained.summary()["segments"]
    assert list(segments) == ["new", "light", "heavy"]
    users = sum(row["users"] for row in segments.values())
    assert segments["light"]["users"] > 0 and segments["heavy"]["users"] > 0
    ranking_baselines = [(name, row) for name, row in trained.baselines.items() if "ndcg@10" in row]  # not RMSE ones
    for model, overall in [("ranker", trained.metrics), *ranking_baselines]:
        for metric in ("ndcg@10", "recall@10", "hit_rate@10"):
            weighted = sum(row["users"] * row[model][metric] for row in segments.values() if row["users"]) / users
            assert weighted == pytest.approx(overall[metric]), (model, metric)
