"""The evaluation gate: may a candidate replace the champion? Decided on the same holdout for both.

Rules (thresholds from the policy):
- with a champion, at least MIN_COMPARISON_USERS users with a held-out positive to compare on; with fewer
  the candidate is refused before any other check: no promotion on no evidence;
- NDCG@10 above the most-popular baseline;
- with a champion: NDCG@10 >= champion × (1 + min_relative_gain);
- no guardrail regression beyond tolerance: Recall@10 and coverage@10 not below champion × (1 − tol),
  RMSE not above champion × (1 + tol) nor above the bias baseline's (user + item biases, on the same held-out
  ratings) × (1 + tol), the latter also without a champion;
- the paired bootstrap 95% interval of the per-user NDCG@10 difference (candidate − champion, same users)
  must have its lower bound at or above −bootstrap_tolerance: no promotion on noise;
- no user segment (retraining.ml.segments: new, light, heavy users by history length) significantly worse: the
  paired bootstrap interval of ΔNDCG@10 within a segment must not lie entirely below −bootstrap_tolerance.
  A segment with fewer than MIN_COMPARISON_USERS users is not checked, and the decision says so.
Every number that decided is returned, so the run can record it."""

from dataclasses import asdict, dataclass, field

import numpy as np

from recsite.formatting import number
from retraining.ml.statistics import mean_interval

GUARDRAILS = [("recall@10", True), ("coverage@10", True), ("rmse", False)]
MIN_COMPARISON_USERS = 20  # below it one user moves the mean NDCG by over 5%: too little to decide on
NOT_ENOUGH_NEW_DATA = "not_enough_new_data"  # the refusal code the trigger efficacy report counts


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]  # every check, passed or not, in order
    numbers: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the checks that refused the candidate
    refusal_code: str = ""  # NOT_ENOUGH_NEW_DATA when refused before any comparison, else empty

    def as_dict(self) -> dict:
        return asdict(self)


def _rmse_against_bias(candidate: dict, rating_bias: dict | None, tolerance: float, reasons: list, refuse) -> None:
    """The RMSE guardrail's second half: a rating model worse than user + item biases is a regression."""
    new, bias = candidate.get("rmse"), (rating_bias or {}).get("rmse")
    if new is None or bias is None:
        return
    limit = bias * (1 + tolerance)
    text = f"RMSE {number(new)} vs the bias baseline's {number(bias)} (limit × (1 + {tolerance:g}) = {number(limit)})"
    if new > limit:
        refuse(f"guardrail rmse: {text}")
    else:
        reasons.append(f"guardrail rmse: {text}")


def gate_decide(
    *,
    candidate: dict,
    popularity: dict,
    champion: dict | None,
    candidate_user_ndcg: np.ndarray | None,
    champion_user_ndcg: np.ndarray | None,
    min_relative_gain: float,
    guardrail_tolerance: float,
    bootstrap_tolerance: float,
    bootstrap_samples: int,
    rating_bias: dict | None = None,
    segments: dict | None = None,
    user_segments: np.ndarray | None = None,
) -> GateDecision:
    """`segments`: the segments_table of the comparison (candidate, champion and baselines per segment);
    `user_segments`: each compared user's segment, in the order of the per-user NDCG arrays."""
    reasons, failures = [], []
    numbers = {"candidate": candidate, "popularity": popularity, "champion": champion, "rating_bias": rating_bias}
    if segments:
        numbers["segments"] = segments

    def refuse(reason: str) -> None:
        reasons.append(reason)
        failures.append(reason)

    compared_users = None if candidate_user_ndcg is None else len(candidate_user_ndcg)
    if champion is not None and compared_users is not None and compared_users < MIN_COMPARISON_USERS:
        refuse(
            f"not enough new holdout data since the champion's cut-off: {compared_users} users with a held-out "
            f"positive, {MIN_COMPARISON_USERS} needed; a later run will have more"
        )
        return GateDecision(
            passed=False, reasons=reasons, numbers=numbers, failures=failures, refusal_code=NOT_ENOUGH_NEW_DATA
        )
    ndcg = candidate.get("ndcg@10")
    if ndcg is None or ndcg <= popularity.get("ndcg@10", 0.0):
        refuse(f"NDCG@10 {number(ndcg)} is not above most-popular's {number(popularity.get('ndcg@10'))}")
    else:
        reasons.append(f"NDCG@10 {number(ndcg)} beats most-popular's {number(popularity.get('ndcg@10'))}")
    _rmse_against_bias(candidate, rating_bias, guardrail_tolerance, reasons, refuse)
    if champion is None:
        reasons.append("no champion: the first candidate only has to beat the baseline")
        return GateDecision(passed=not failures, reasons=reasons, numbers=numbers, failures=failures)

    required = champion["ndcg@10"] * (1 + min_relative_gain)
    numbers["required_ndcg@10"] = required
    bar = f"champion {number(champion['ndcg@10'])} × (1 + {min_relative_gain:g}) = {number(required)}"
    if ndcg is None or ndcg < required:
        refuse(f"NDCG@10 {number(ndcg)} < {bar}")
    else:
        reasons.append(f"NDCG@10 {number(ndcg)} ≥ {bar}")
    for key, higher_is_better in GUARDRAILS:
        new, old = candidate.get(key), champion.get(key)
        if new is None or old is None:
            continue
        limit = old * (1 - guardrail_tolerance) if higher_is_better else old * (1 + guardrail_tolerance)
        regressed = new < limit if higher_is_better else new > limit
        if regressed:
            refuse(
                f"guardrail {key}: {number(new)} vs champion {number(old)} "
                f"is beyond the {guardrail_tolerance:.0%} tolerance"
            )
        elif key == "rmse":
            reasons.append(
                f"guardrail rmse: {number(new)} vs champion {number(old)} within the "
                f"{guardrail_tolerance:.0%} tolerance"
            )
    if candidate_user_ndcg is not None and champion_user_ndcg is not None:
        mean, low, high = mean_interval(
            np.asarray(candidate_user_ndcg) - np.asarray(champion_user_ndcg), samples=bootstrap_samples
        )
        numbers["ndcg_difference"] = {
            "mean": mean,
            "ci95_low": low,
            "ci95_high": high,
            "users": len(candidate_user_ndcg),
            "samples": bootstrap_samples,
        }
        if low < -bootstrap_tolerance:
            refuse(
                f"95% CI of ΔNDCG@10 [{low:+.4f}, {high:+.4f}] reaches below −{bootstrap_tolerance:g}: "
                "not distinguishable from a loss"
            )
        else:
            reasons.append(f"95% CI of ΔNDCG@10 [{low:+.4f}, {high:+.4f}] stays above −{bootstrap_tolerance:g}")
    if segments and user_segments is not None and "ndcg_difference" in numbers:
        checks, numbers["segments"] = segment_checks(
            segments=segments,
            user_segments=user_segments,
            difference=np.asarray(candidate_user_ndcg) - np.asarray(champion_user_ndcg),
            tolerance=bootstrap_tolerance,
            samples=bootstrap_samples,
        )
        for reason, refused in checks:
            (refuse if refused else reasons.append)(reason)
    return GateDecision(passed=not failures, reasons=reasons, numbers=numbers, failures=failures)


def segment_checks(
    *, segments: dict, user_segments: np.ndarray, difference: np.ndarray, tolerance: float, samples: int
) -> tuple[list[tuple[str, bool]], dict]:
    """Per segment, a sentence and whether it refuses: refused when the 95% interval of the mean per-user ΔNDCG@10
    (candidate − champion) lies entirely below −tolerance, i.e. the candidate is worse there beyond noise. A
    loss hidden by a larger gain elsewhere is what this catches. Also returns `segments` with each row's
    interval, or why it was not checked."""
    checks, table = [], {}
    for name, row in segments.items():
        members = np.asarray(user_segments) == name
        label = f"segment {name} ({row['training_events']} training events, {int(members.sum())} users)"
        if members.sum() < MIN_COMPARISON_USERS:
            why = f"fewer than {MIN_COMPARISON_USERS} users" if members.any() else "no users"
            table[name] = {**row, "ndcg_difference": {"skipped": why}}
            checks.append((f"{label}: not checked, {why}", False))
            continue
        mean, low, high = mean_interval(difference[members], samples=samples)
        table[name] = {**row, "ndcg_difference": {"mean": mean, "ci95_low": low, "ci95_high": high}}
        compared = (
            f"NDCG@10 {number(row['candidate']['ndcg@10'])} vs champion {number(row['champion']['ndcg@10'])}, "
            f"95% CI of ΔNDCG@10 [{low:+.4f}, {high:+.4f}]"
        )
        if high < -tolerance:
            checks.append((f"{label}: {compared} lies below −{tolerance:g}: significantly worse", True))
        else:
            checks.append((f"{label}: {compared} does not lie below −{tolerance:g}", False))
    return checks, table
