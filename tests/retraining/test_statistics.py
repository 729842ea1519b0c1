"""The one statistics module: bootstrap intervals over users and the verdicts built on them."""

import numpy as np
import pytest

from retraining.ml.statistics import Interval, UnitCounts, experiment_verdict, mean_interval, rate_difference_interval


def arm(rate: float, users: int, lists: int, seed: int) -> UnitCounts:
    successes = np.random.default_rng(seed).binomial(lists, rate, users).astype(float)
    return UnitCounts(successes=successes, trials=np.full(users, float(lists)))


def old_rate_interval(control: UnitCounts, treatment: UnitCounts, samples: int, seed: int) -> tuple[float, float]:
    """The hand-written resampling this module replaced, as an independent reference."""
    rng = np.random.default_rng(seed)

    def rates(counts):
        picks = rng.integers(0, len(counts.trials), size=(samples, len(counts.trials)))
        return counts.successes[picks].sum(axis=1) / counts.trials[picks].sum(axis=1)

    spread = rates(treatment) - rates(control)
    low, high = np.percentile(spread, [2.5, 97.5])
    return float(low), float(high)


def test_the_rate_difference_interval_matches_the_old_resampling_within_bootstrap_noise():
    control, treatment = arm(0.30, 400, 3, seed=1), arm(0.22, 400, 3, seed=2)
    interval = rate_difference_interval(control=control, treatment=treatment, samples=2000)
    observed = treatment.successes.sum() / treatment.trials.sum() - control.successes.sum() / control.trials.sum()
    assert interval.estimate == pytest.approx(observed)
    low, high = old_rate_interval(control, treatment, samples=2000, seed=5)
    assert interval.low == pytest.approx(low, abs=0.006) and interval.high == pytest.approx(high, abs=0.006)
    assert interval.low < interval.estimate < interval.high < 0


def test_users_not_lists_are_resampled():
    """Ten lists per user, all clicked or none: as many independent units as users, so a wider interval than
    the same rates spread over as many single-list users."""
    clustered = UnitCounts(np.repeat([0.0, 10.0], 50), np.full(100, 10.0))
    spread = UnitCounts(np.repeat([0.0, 1.0], 500), np.full(1000, 1.0))
    wide = rate_difference_interval(control=clustered, treatment=clustered, samples=1000)
    narrow = rate_difference_interval(control=spread, treatment=spread, samples=1000)
    assert wide.high - wide.low > 2.5 * (narrow.high - narrow.low)


def test_an_empty_arm_has_no_interval_and_a_single_user_arm_is_held_fixed():
    some = arm(0.3, 50, 2, seed=3)
    assert rate_difference_interval(control=UnitCounts(np.array([]), np.array([])), treatment=some, samples=100) is None
    alone = UnitCounts(np.array([1.0]), np.array([2.0]))
    interval = rate_difference_interval(control=alone, treatment=some, samples=500)
    assert interval.low < interval.estimate < interval.high
    assert mean_interval(np.array([0.25]), samples=100) == (0.25, 0.25, 0.25)
    assert mean_interval(np.array([]), samples=100) == (0.0, 0.0, 0.0)


def test_intervals_are_deterministic_for_a_seed():
    control, treatment = arm(0.3, 100, 2, seed=1), arm(0.3, 100, 2, seed=2)
    first = rate_difference_interval(control=control, treatment=treatment, samples=300, seed=9)
    assert rate_difference_interval(control=control, treatment=treatment, samples=300, seed=9) == first


@pytest.mark.parametrize(
    ("intervals", "sufficient", "verdict"),
    [
        ([Interval(-0.1, -0.2, -0.01), Interval(0.1, 0.05, 0.2)], True, "challenger_worse"),
        ([Interval(0.1, 0.05, 0.2), None], True, "challenger_better"),
        ([Interval(0.0, -0.1, 0.1), Interval(0.0, -0.1, 0.1)], True, "no_significant_difference"),
        ([Interval(-0.1, -0.2, -0.01)], False, "insufficient_sample"),
        ([None, None], True, "no_significant_difference"),
    ],
)
def test_the_verdict_puts_a_loss_on_any_metric_first_and_waits_for_the_sample(intervals, sufficient, verdict):
    assert experiment_verdict(intervals=intervals, sufficient=sufficient) == verdict
