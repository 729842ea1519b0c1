"""The periodic trigger check: evaluate every trigger, record the evaluation, start at most one run."""

from datetime import datetime, timedelta

from recommendations.clock import system_now
from recommendations.selectors import events_after, online_hit_rate, outcome_first_served_at, users_with_events_after
from registry.models import ModelVersion
from registry.selectors import champion_version, running_experiment
from retraining.models import HoldReason, RetrainPolicy, TrainingRun, Trigger, TriggerEvaluation
from retraining.services.drift import drift_check_run
from retraining.services.policy import policy_active
from retraining.services.runs import BrokerUnavailable, RunInFlight, training_run_request, training_runs_fail_stale

# When several fire at once, the run is attributed to the first (`trigger`); all are recorded (`triggers`, evidence).
PRIORITY = [Trigger.DRIFT, Trigger.PERFORMANCE, Trigger.VOLUME, Trigger.TIME]


def triggers_check(*, now: datetime | None = None) -> TriggerEvaluation:
    stale = training_runs_fail_stale()
    policy = policy_active()
    clock = now or system_now()
    champion = champion_version()
    results = {
        Trigger.TIME: _time(policy, champion, clock),
        Trigger.VOLUME: _volume(policy, champion, clock),
        Trigger.PERFORMANCE: _performance(policy, champion, clock),
        Trigger.DRIFT: _drift(policy, champion, clock),
    }
    fired = [name for name in PRIORITY if results[name]["verdict"] == "fire"]
    evaluation = TriggerEvaluation(
        clock=clock, results={str(k): v for k, v in results.items()}, fired=fired[0] if fired else ""
    )
    notes = [f"failed stale runs {stale}"] if stale else []
    if not fired:
        evaluation.action = "; ".join([*notes, "nothing fired"])
    elif (experiment := running_experiment()) is not None:
        # A running experiment is judged on a fixed pair of models; a new candidate would supersede it.
        evaluation.held_reason = HoldReason.EXPERIMENT
        evaluation.action = "; ".join(
            [*notes, f"{fired[0]} fired; held while {experiment} runs (stop it to retrain now)"]
        )
    elif (cooling := _cooldown_until(policy, clock)) is not None:
        evaluation.held_reason = HoldReason.COOLDOWN
        evaluation.action = "; ".join([*notes, f"{fired[0]} fired; cooling down until {cooling:%Y-%m-%d %H:%M}"])
    elif (short := _new_data_shortfall(policy, champion, clock)) is not None:
        evaluation.held_reason = HoldReason.NOT_ENOUGH_NEW_DATA
        evaluation.action = "; ".join([*notes, f"{fired[0]} fired; held: {short}"])
    else:
        evidence = {"fired": [str(name) for name in fired], **{str(name): results[name] for name in fired}}
        try:
            evaluation.run = training_run_request(
                trigger=fired[0], triggers=evidence["fired"], evidence=evidence, requested_by="beat", data_until=clock
            )
            evaluation.action = "; ".join([*notes, f"started run {evaluation.run.pk}"])
        except RunInFlight as exc:
            evaluation.held_reason = HoldReason.RUN_IN_FLIGHT
            evaluation.action = "; ".join(
                [*notes, f"{fired[0]} fired; run {exc.extra.get('run_id')} already in flight"]
            )
        except BrokerUnavailable as exc:
            evaluation.held_reason = HoldReason.BROKER_UNAVAILABLE
            failed = f"{fired[0]} fired; run {exc.extra['run_id']} failed: {exc.message}"
            evaluation.action = "; ".join([*notes, failed])
    evaluation.save()
    return evaluation


def _result(enabled: bool, value=None, threshold=None, fire: bool = False, detail: str = "") -> dict:
    verdict = "off" if not enabled else ("n/a" if value is None else ("fire" if fire else "quiet"))
    return {"enabled": enabled, "value": value, "threshold": threshold, "verdict": verdict, "detail": detail}


def _time(policy: RetrainPolicy, champion: ModelVersion | None, clock: datetime) -> dict:
    if champion is None or champion.training_window_end is None:
        return _result(policy.time_enabled, detail="no champion yet")
    hours = (clock - champion.training_window_end).total_seconds() / 3600
    return _result(
        policy.time_enabled,
        round(hours, 2),
        policy.time_interval_hours,
        hours >= policy.time_interval_hours,
        f"hours since {champion}'s training cut-off",
    )


def _volume(policy: RetrainPolicy, champion: ModelVersion | None, clock: datetime) -> dict:
    since = champion.training_window_end if champion else None
    count = events_after(moment=since, until=clock)
    detail = f"events since {champion}'s training cut-off" if champion else "events in total (no champion yet)"
    return _result(policy.volume_enabled, count, policy.volume_min_events, count >= policy.volume_min_events, detail)


def _performance(policy: RetrainPolicy, champion: ModelVersion | None, clock: datetime) -> dict:
    """The champion's online hit rate in the latest window against its first window after promotion."""
    if champion is None:
        return _result(policy.performance_enabled, detail="no champion yet")
    window = timedelta(hours=policy.performance_window_hours)
    first = outcome_first_served_at(model_version=champion.version)
    if first is None or first + window > clock - window:
        return _result(policy.performance_enabled, detail="not enough time served for a baseline and a later window")
    baseline = online_hit_rate(model_version=champion.version, start=first, end=first + window)
    current = online_hit_rate(model_version=champion.version, start=clock - window, end=clock)
    minimum = policy.performance_min_impressions
    if baseline.impressions < minimum or current.impressions < minimum or not baseline.rate:
        return _result(
            policy.performance_enabled,
            detail=f"impressions: baseline {baseline.impressions}, current {current.impressions}, minimum {minimum}",
        )
    threshold = policy.performance_ratio * baseline.rate
    return _result(
        policy.performance_enabled,
        round(current.rate, 5),
        round(threshold, 5),
        current.rate < threshold,
        f"hit rate now {current.rate:.4f} ({current.impressions} lists) vs {baseline.rate:.4f} after promotion",
    )


def _drift(policy: RetrainPolicy, champion: ModelVersion | None, clock: datetime) -> dict:
    if not policy.drift_enabled:
        return _result(False)
    report = drift_check_run(policy=policy, now=clock, champion=champion)
    if report is None:
        return _result(True, detail="the champion has no drift reference")
    return _result(
        True,
        round(report.drifted_share, 4),
        policy.drift_share_threshold,
        report.verdict == "drift",
        f"drift report {report.pk}: {report.verdict}, drifted {report.extra_scores.get('drifted')}",
    )


def _new_data_shortfall(policy: RetrainPolicy, champion: ModelVersion | None, clock: datetime) -> str | None:
    """Why a run would be wasted for lack of new holdout users (the gate compares the candidate and the champion on
    the events after the champion's cut-off), or None. With no champion nothing is compared, so nothing is held."""
    required = policy.min_new_holdout_users
    if not required or champion is None or champion.training_window_end is None:
        return None
    users = users_with_events_after(moment=champion.training_window_end, until=clock)
    if users >= required:
        return None
    return (
        f"{users} users with events after {champion}'s training cut-off, {required} required "
        f"(policy min_new_holdout_users)"
    )


def _cooldown_until(policy: RetrainPolicy, clock: datetime) -> datetime | None:
    last = TrainingRun.objects.exclude(trigger=Trigger.MANUAL).exclude(data_until=None).order_by("-data_until").first()
    if last is None:
        return None
    until = last.data_until + timedelta(minutes=policy.cooldown_minutes)
    return until if clock < until else None
