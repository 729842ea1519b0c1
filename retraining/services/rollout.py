"""What a candidate that passed the gate does next, and the periodic judgement of the running experiment.

A canary advances one step once the step has been held `rollout_min_step_minutes` and the challenger has
served `rollout_min_impressions` lists in it whose outcomes are recorded, provided the arms' comparison (over the
whole experiment) does not show the challenger significantly worse; the step that would reach 100% promotes it
instead. A challenger significantly worse on CTR or hit rate (a confidence interval of the difference entirely
below zero, once both arms hold the minimum sample), or whose error share exceeds the champion's by more than the
policy allows, is rolled back to 0% and rejected, with the reason in the audit trail. Shadows and A/B tests are
judged by operators: the check keeps their report current."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from recommendations.clock import system_now
from recommendations.models import Impression
from recommendations.selectors import arm_outcomes_count
from registry.models import DeploymentMode, Experiment
from registry.selectors import running_experiment
from registry.services import (
    ChallengerInput,
    challenger_report_save,
    challenger_start,
    challenger_stop,
    challenger_traffic_advance,
    model_version_promote,
)
from retraining.models import RetrainPolicy, Rollout, RunStatus
from retraining.services.experiments import arms_compare
from retraining.services.policy import policy_active

ROLLOUT_ACTOR = "rollout"
ERROR_CHECK_MIN_IMPRESSIONS = 100


def candidate_deploy(*, version: int, champion: int | None, reason: str, policy: RetrainPolicy) -> str:
    """Promote a gated candidate, or start it as the challenger the way the policy says (superseding a
    running experiment). With no champion there is nothing to compare with, so it is promoted. Returns the
    training run's final status."""
    if policy.candidate_rollout == Rollout.PROMOTE or champion is None:
        model_version_promote(version=version, actor="gate", reason=reason, expected_current=champion)
        return RunStatus.PROMOTED
    challenger_deploy(
        version=version, mode=policy.candidate_rollout, actor="gate", reason=reason, policy=policy, replace=True
    )
    return RunStatus.CHALLENGER


def challenger_deploy(
    *,
    version: int,
    mode: str,
    actor: str,
    reason: str,
    policy: RetrainPolicy | None = None,
    traffic_percent: int | None = None,
    steps: list[int] | None = None,
    replace: bool = False,
    now: datetime | None = None,
) -> Experiment:
    """Start `version` as the challenger at `now` (default: the runtime's clock); the share, the canary schedule
    and the minimums come from the policy unless given."""
    policy = policy or policy_active()
    if traffic_percent is None:
        traffic_percent = {
            DeploymentMode.AB: policy.ab_traffic_percent,
            DeploymentMode.SHADOW: policy.shadow_traffic_percent,
        }.get(mode)
    data = ChallengerInput(
        version=version,
        mode=mode,
        traffic_percent=traffic_percent,
        steps=tuple(steps or (policy.canary_steps if mode == DeploymentMode.CANARY else ())),
        min_step_seconds=round(policy.rollout_min_step_minutes * 60),
        min_impressions=policy.rollout_min_impressions,
    )
    return challenger_start(data=data, actor=actor, reason=reason, at=now or system_now(), replace=replace)


def challenger_report(*, experiment: Experiment, confidence: float, save: bool = False) -> dict:
    """The per-arm comparison of `experiment` with its bookkeeping; `save` keeps it as the experiment's
    last judgement (what the rollout check does)."""
    treatment = Impression.Arm.SHADOW if experiment.mode == DeploymentMode.SHADOW else Impression.Arm.CHALLENGER
    report = {
        "experiment_id": experiment.pk,
        "mode": experiment.mode,
        "status": experiment.status,
        "champion_version": experiment.champion.version if experiment.champion else None,
        "challenger_version": experiment.version.version,
        "traffic_percent": experiment.traffic_percent,
        "steps": experiment.steps,
        "step_index": experiment.step_index,
        "started_at": experiment.started_at.isoformat(),
        "ended_at": experiment.ended_at and experiment.ended_at.isoformat(),
        **arms_compare(
            experiment_id=experiment.pk,
            treatment_arm=treatment,
            min_impressions=experiment.min_impressions,
            confidence=confidence,
        ),
    }
    if save:
        challenger_report_save(experiment_id=experiment.pk, report=report)
    return report


def experiment_stop(
    *, actor: str, reason: str, reject: bool = False, experiment_id: int | None = None, now: datetime | None = None
) -> Experiment:
    """Stop the running experiment by an operator's decision, keeping its final per-arm report."""
    experiment = running_experiment()
    if experiment is not None:
        challenger_report(experiment=experiment, confidence=policy_active().rollout_confidence, save=True)
    return challenger_stop(
        actor=actor, reason=reason, at=now or system_now(), reject=reject, experiment_id=experiment_id
    )


def experiment_promote(*, experiment: Experiment, actor: str, reason: str) -> None:
    """Make the experiment's challenger the champion by an operator's decision, keeping its final report."""
    challenger_report(experiment=experiment, confidence=policy_active().rollout_confidence, save=True)
    model_version_promote(
        version=experiment.version.version,
        actor=actor,
        reason=reason,
        expected_current=experiment.champion.version if experiment.champion else None,
    )


@dataclass(frozen=True)
class RolloutCheck:
    experiment_id: int
    action: str  # reported | held | advanced | promoted | rolled_back
    reason: str
    report: dict


def rollout_check(*, now: datetime | None = None) -> RolloutCheck | None:
    """Judge the running experiment, if any, and act on a canary."""
    experiment = running_experiment()
    if experiment is None:
        return None
    policy, now = policy_active(), now or system_now()
    report = challenger_report(experiment=experiment, confidence=policy.rollout_confidence, save=True)
    if experiment.mode != DeploymentMode.CANARY:
        return RolloutCheck(experiment.pk, "reported", report["verdict"], report)
    failure = canary_failure(report=report, policy=policy)
    if failure:
        challenger_stop(
            actor=ROLLOUT_ACTOR,
            reason=f"rolled back at {experiment.traffic_percent}%: {failure}",
            at=now,
            reject=True,
            outcome=Experiment.Status.ROLLED_BACK,
            experiment_id=experiment.pk,
        )
        return RolloutCheck(experiment.pk, "rolled_back", failure, report)
    waiting = _step_unfinished(experiment, report, now)
    if waiting:
        return RolloutCheck(experiment.pk, "held", waiting, report)
    return _step_next(experiment, report, now)


def canary_failure(*, report: dict, policy: RetrainPolicy) -> str:
    """Why the canary must be rolled back, or ''."""
    control, treatment = report["arms"]["champion"], report["arms"]["challenger"]
    if treatment["impressions"] >= ERROR_CHECK_MIN_IMPRESSIONS and treatment["error_share"] is not None:
        increase = treatment["error_share"] - (control["error_share"] or 0.0)
        if increase > policy.rollout_max_error_increase:
            return f"error share {treatment['error_share']:.1%} vs the champion's {control['error_share'] or 0:.1%}"
    if report["verdict"] == "challenger_worse":
        worse = [
            f"{name} {d['delta']:+.4f} (CI {d['ci_low']:+.4f}…{d['ci_high']:+.4f})"
            for name, d in report["differences"].items()
            if d["ci_high"] is not None and d["ci_high"] < 0
        ]
        return "significantly worse online: " + ", ".join(worse)
    return ""


def _step_unfinished(experiment: Experiment, report: dict, now: datetime) -> str:
    held = now - experiment.step_started_at
    served = arm_outcomes_count(
        experiment_id=experiment.pk, arm=Impression.Arm.CHALLENGER, since=experiment.step_started_at
    )
    missing = []
    if held < timedelta(seconds=experiment.min_step_seconds):
        missing.append(f"held {held.total_seconds() / 60:.0f} of {experiment.min_step_seconds / 60:.0f} min")
    if served < experiment.min_impressions:
        missing.append(f"{served} of {experiment.min_impressions} challenger impressions in this step")
    if not report["sufficient_sample"]:
        missing.append("the arms lack the minimum sample")
    return "; ".join(missing)


def _step_next(experiment: Experiment, report: dict, now: datetime) -> RolloutCheck:
    verdict = f"{report['verdict'].replace('_', ' ')} at {experiment.traffic_percent}%"
    if experiment.steps[experiment.step_index + 1] >= 100:
        model_version_promote(
            version=experiment.version.version,
            actor=ROLLOUT_ACTOR,
            reason=f"canary completed: {verdict}",
            expected_current=experiment.champion.version if experiment.champion else None,
        )
        return RolloutCheck(experiment.pk, "promoted", verdict, report)
    challenger_traffic_advance(
        experiment_id=experiment.pk,
        step_index=experiment.step_index,
        actor=ROLLOUT_ACTOR,
        reason=f"step held: {verdict}",
        at=now,
    )
    return RolloutCheck(experiment.pk, "advanced", verdict, report)
