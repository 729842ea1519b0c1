import numpy as np
import pytest

from retraining.ml.statistics import mean_interval
from retraining.services.gate import MIN_COMPARISON_USERS, gate_decide

POP = {"ndcg@10": 0.08}
DEFAULTS = dict(min_relative_gain=0.01, guardrail_tolerance=0.05, bootstrap_tolerance=0.005, bootstrap_samples=1000)


def metrics(ndcg, recall=0.1, coverage=0.2, rmse=0.9):
    return {"ndcg@10": ndcg, "recall@10": recall, "coverage@10": coverage, "rmse": rmse}


def decide(candidate, champion=None, cand_users=None, champ_users=None):
    return gate_decide(
        candidate=candidate,
        popularity=POP,
        champion=champion,
        candidate_user_ndcg=cand_users,
        champion_user_ndcg=champ_users,
        **DEFAULTS,
    )


def test_the_first_candidate_is_promoted_when_it_beats_most_popular():
    assert decide(metrics(0.10)).passed
    refused = decide(metrics(0.07))
    assert not refused.passed and "not above most-popular" in refused.reasons[0]


def test_a_candidate_must_beat_the_champion_by_the_minimum_gain():
    rng = np.random.default_rng(1)
    champion_users = rng.random(2000) * 0.2
    better = champion_users + 0.02
    assert decide(metrics(0.12), metrics(0.10), better, champion_users).passed
    decision = decide(metrics(0.1005), metrics(0.10), champion_users + 0.0005, champion_users)
    assert not decision.passed
    assert decision.numbers["required_ndcg@10"] == pytest.approx(0.101)


@pytest.mark.parametrize("guardrail", [{"recall@10": 0.08}, {"coverage@10": 0.1}, {"rmse": 1.0}])
def test_a_guardrail_regression_beyond_tolerance_refuses_a_better_ndcg(guardrail):
    candidate = {**metrics(0.15), **guardrail}
    decision = decide(candidate, metrics(0.10))
    assert not decision.passed
    assert any(f"guardrail {next(iter(guardrail))}" in reason for reason in decision.reasons)


def test_a_gain_within_noise_is_refused_by_the_bootstrap_interval():
    rng = np.random.default_rng(2)
    champion_users = rng.random(300)
    noisy = champion_users + rng.normal(0.002, 0.3, 300)  # mean gain tiny, spread large
    decision = decide(metrics(0.2), metrics(0.1), noisy, champion_users)
    assert not decision.passed
    interval = decision.numbers["ndcg_difference"]
    assert interval["ci95_low"] < -0.005 < interval["ci95_high"]


def test_too_few_users_to_compare_on_refuse_even_a_candidate_far_better_than_the_champion():
    champion_users = np.full(MIN_COMPARISON_USERS - 1, 0.1)
    decision = decide(metrics(0.5), metrics(0.1), champion_users + 0.4, champion_users)
    assert not decision.passed
    assert len(decision.failures) == 1 and decision.failures == decision.reasons
    assert decision.failures[0].startswith("not enough new holdout data since the champion's cut-off: 19 users")
    enough = np.full(MIN_COMPARISON_USERS, 0.1)
    assert decide(metrics(0.5), metrics(0.1), enough + 0.4, enough).passed


def test_the_bootstrap_interval_covers_the_mean_and_is_deterministic():
    differences = np.random.default_rng(3).normal(0.01, 0.05, 1000)
    mean, low, high = mean_interval(differences, samples=500)
    assert low < mean < high
    assert mean_interval(differences, samples=500) == (mean, low, high)
    assert high - low == pytest.approx(2 * 1.96 * 0.05 / np.sqrt(1000), rel=0.2)


def test_a_rating_model_worse_than_the_bias_baseline_is_refused_with_or_without_a_champion():
    rng = np.random.default_rng(2)
    champion_users = rng.random(2000) * 0.2
    for champion, users in ((None, None), (metrics(0.10, rmse=0.95), champion_users + 0.02)):
        refused = gate_decide(
            candidate=metrics(0.15, rmse=0.95),
            popularity=POP,
            champion=champion,
            candidate_user_ndcg=users,
            champion_user_ndcg=None if users is None else champion_users,
            rating_bias={"rmse": 0.88},
            **DEFAULTS,
        )
        assert not refused.passed
        assert any("guardrail rmse: RMSE 0.9500 vs the bias baseline's 0.8800" in f for f in refused.failures)
        assert refused.numbers["rating_bias"] == {"rmse": 0.88}
        passed = gate_decide(
            candidate=metrics(0.15, rmse=0.86),
            popularity=POP,
            champion=champion,
            candidate_user_ndcg=users,
            champion_user_ndcg=None if users is None else champion_users,
            rating_bias={"rmse": 0.88},
            **DEFAULTS,
        )
        assert passed.passed and any("bias baseline's 0.8800" in reason for reason in passed.reasons)
