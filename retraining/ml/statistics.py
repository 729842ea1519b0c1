"""Bootstrap intervals and the verdicts built on them, shared by the offline gate (per-user NDCG differences)
and online experiments (per-arm rates). No Django.

scipy.stats.bootstrap does the resampling, with percentile intervals (the method both callers used before it,
so their numbers stay comparable). Users are the resampling unit everywhere: a user's lists are not
independent of each other, so an experiment's rate is resampled as whole users (their successes and their
lists together), which scipy gets as resampled user indices."""

from typing import NamedTuple

import numpy as np
from scipy import stats

# Values scipy holds at once per batch of resamples (batch × users): bounds memory for large experiments.
_BATCH_CELLS = 2_000_000


class Interval(NamedTuple):
    estimate: float
    low: float
    high: float


class UnitCounts(NamedTuple):
    """Per unit (user): how many successes among how many trials (lists)."""

    successes: np.ndarray
    trials: np.ndarray


def mean_interval(values: np.ndarray, *, samples: int, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean of `values` (one per user) and its percentile bootstrap interval; (0, 0, 0) for no values."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return Interval(0.0, 0.0, 0.0)
    low, high = _bootstrap(
        [values], lambda resampled, axis: resampled.mean(axis=axis), samples=samples, seed=seed, level=level
    )
    return Interval(float(values.mean()), low, high)


def rate_difference_interval(
    *, control: UnitCounts, treatment: UnitCounts, samples: int, seed: int = 0, level: float = 0.95
) -> Interval | None:
    """Treatment's rate (successes / trials) minus control's, with a percentile bootstrap interval that
    resamples each arm's users independently; None when an arm has no users."""
    arms = (treatment, control)
    if any(len(arm.trials) == 0 for arm in arms):
        return None
    everyone = [np.arange(len(arm.trials)) for arm in arms]

    def difference(*resampled: np.ndarray, axis: int) -> np.ndarray:
        picks = iter(resampled)  # only the arms with two or more users are resampled (see _bootstrap)
        rates = [_rate(arm, next(picks) if len(users) > 1 else users, axis) for arm, users in zip(arms, everyone)]
        return rates[0] - rates[1]

    low, high = _bootstrap(everyone, difference, samples=samples, seed=seed, level=level)
    return Interval(float(difference(*[users for users in everyone if len(users) > 1], axis=-1)), low, high)


def _rate(counts: UnitCounts, users: np.ndarray, axis: int) -> np.ndarray:
    users = users.astype(np.intp)
    return counts.successes[users].sum(axis=axis) / counts.trials[users].sum(axis=axis)


def _bootstrap(data: list[np.ndarray], statistic, *, samples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of `statistic` over resamples of `data`. A sample of one unit can only resample to
    itself, so it is left out of the resampling (scipy refuses it) and the statistic keeps it fixed."""
    varying = [sample for sample in data if len(sample) > 1]
    if not varying:
        value = float(statistic(*data, axis=-1))
        return value, value
    units = sum(len(sample) for sample in varying)
    result = stats.bootstrap(
        varying,
        statistic,
        n_resamples=samples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        batch=max(1, _BATCH_CELLS // units),
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def experiment_verdict(*, intervals: list[Interval | None], sufficient: bool) -> str:
    """An experiment's verdict from its metrics' difference intervals (treatment − control, higher is better):
    worse as soon as one interval lies entirely below zero (a loss on any metric outweighs gains on others),
    better when one lies entirely above, and never before both arms hold the minimum sample."""
    if not sufficient:
        return "insufficient_sample"
    known = [interval for interval in intervals if interval is not None]
    if any(interval.high < 0 for interval in known):
        return "challenger_worse"
    if any(interval.low > 0 for interval in known):
        return "challenger_better"
    return "no_significant_difference"
