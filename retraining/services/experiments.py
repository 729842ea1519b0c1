"""The comparison of an experiment's arms, from their recorded outcomes (recommendations.selectors), with
the intervals and the verdict of the one statistics module the offline gate uses too."""

from dataclasses import asdict

from recommendations.models import Impression
from recommendations.selectors import ArmOutcomes, experiment_arm_outcomes, experiment_overlap
from retraining.ml.statistics import Interval, UnitCounts, experiment_verdict, rate_difference_interval


def arms_compare(
    *,
    experiment_id: int,
    treatment_arm: str,
    min_impressions: int,
    confidence: float = 0.95,
    replicates: int = 1000,
    seed: int = 0,
) -> dict:
    """The champion's arm against the challenger's (or its shadow) in one experiment: each arm's metrics, the
    difference in CTR and hit rate with a bootstrap confidence interval over users (users, not lists, are
    the independent units), and a verdict once both arms have `min_impressions`. A shadow comparison counts
    both arms' clicks and hits by user, item and time, and adds the overlap of the two lists per request."""
    shadow = treatment_arm == Impression.Arm.SHADOW
    control, treatment = (
        experiment_arm_outcomes(experiment_id=experiment_id, arm=arm, by_time=shadow)
        for arm in (Impression.Arm.CHAMPION, treatment_arm)
    )
    differences = {
        name: rate_difference_interval(
            control=_counts(control, metric),
            treatment=_counts(treatment, metric),
            samples=replicates,
            seed=seed,
            level=confidence,
        )
        for name, metric in (("ctr", "clicks"), ("hit_rate", "hits"))
    }
    sufficient = min(control.summary.impressions, treatment.summary.impressions) >= min_impressions
    report = {
        "arms": {Impression.Arm.CHAMPION: asdict(control.summary), treatment_arm: asdict(treatment.summary)},
        "differences": {name: _difference(interval) for name, interval in differences.items()},
        "min_impressions": min_impressions,
        "confidence": confidence,
        "sufficient_sample": sufficient,
        "verdict": experiment_verdict(intervals=list(differences.values()), sufficient=sufficient),
        "attribution": "user, item and time" if shadow else "recommendation_id, then user, item and time",
    }
    if shadow:
        report["overlap_at_k"] = experiment_overlap(experiment_id=experiment_id)
    return report


def _counts(arm: ArmOutcomes, metric: str) -> UnitCounts:
    return UnitCounts(successes=getattr(arm, metric), trials=arm.lists)


def _difference(interval: Interval | None) -> dict:
    if interval is None:
        return {"delta": None, "ci_low": None, "ci_high": None}
    return {"delta": interval.estimate, "ci_low": interval.low, "ci_high": interval.high}
