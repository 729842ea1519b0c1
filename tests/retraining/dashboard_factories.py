"""A small history for the dashboard and the timeline: three versions (v1 promoted, v2 rejected by the gate, v3 a
challenger in an A/B test), their training runs with gates, a drift report, served lists and answered events."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from recommendations.models import Item
from registry.models import DeploymentChange, ModelStatus, ModelVersion
from registry.services import ChallengerInput, challenger_start, model_version_promote, model_version_reject
from retraining.models import DriftReport, RunStatus, TrainingRun, Trigger
from tests.recommendations.factories import event, outcomes_recorded, serve, user
from tests.registry.factories import registered_version


@dataclass
class History:
    v1: ModelVersion
    v2: ModelVersion
    v3: ModelVersion
    experiment_id: int
    now: datetime


def _run(
    version: ModelVersion,
    *,
    trigger: str,
    status: str,
    passed: bool,
    candidate: float,
    champion: float | None,
    at: datetime,
) -> TrainingRun:
    gate = {
        "passed": passed,
        "reasons": [f"NDCG@10 {candidate} against {champion}"],
        "failures": [] if passed else [f"NDCG@10 {candidate} is below the required gain over {champion}"],
        "numbers": {
            "candidate": {"ndcg@10": candidate},
            "popularity": {"ndcg@10": 0.05},
            "champion": {"ndcg@10": champion} if champion is not None else None,
        },
    }
    run = TrainingRun.objects.create(
        trigger=trigger,
        status=status,
        in_flight=None,
        gate=gate,
        model_version=version,
        heartbeat_at=at,
        finished_at=at,
    )
    TrainingRun.objects.filter(pk=run.pk).update(created_at=at)
    return run


def _backdated(change: DeploymentChange, at: datetime) -> None:
    DeploymentChange.objects.filter(pk=change.pk).update(created_at=at)


def dashboard_history(tmp_path: Path, *, now: datetime) -> History:
    """Everything each chart and the timeline draws from, at times before `now` (the system clock)."""
    v1 = registered_version(tmp_path, ndcg=0.12, marker="h1")
    v2 = registered_version(tmp_path, ndcg=0.11, marker="h2")
    v3 = registered_version(tmp_path, ndcg=0.14, marker="h3")
    for n, version in enumerate((v1, v2, v3)):
        ModelVersion.objects.filter(pk=version.pk).update(
            training_duration_s=30.0 + 10 * n,
            baseline_metrics={"popularity": {"ndcg@10": 0.05}, "collaborative": {"ndcg@10": 0.09}},
        )
    _run(
        v1,
        trigger=Trigger.MANUAL,
        status=RunStatus.PROMOTED,
        passed=True,
        candidate=0.12,
        champion=None,
        at=now - timedelta(days=3),
    )
    _run(
        v2,
        trigger=Trigger.VOLUME,
        status=RunStatus.REJECTED,
        passed=False,
        candidate=0.11,
        champion=0.12,
        at=now - timedelta(days=2),
    )
    _run(
        v3,
        trigger=Trigger.DRIFT,
        status=RunStatus.CHALLENGER,
        passed=True,
        candidate=0.14,
        champion=0.12,
        at=now - timedelta(days=1),
    )
    _backdated(
        model_version_promote(version=v1.version, actor="admin:ops", reason="first model"), now - timedelta(days=3)
    )
    _backdated(
        model_version_reject(
            version=v2.version, actor="gate", reason="run 2 (volume): NDCG@10 below the required gain"
        ),
        now - timedelta(days=2),
    )
    experiment = challenger_start(
        data=ChallengerInput(version=v3.version, mode="ab", traffic_percent=50),
        actor="gate",
        reason="passed the gate; A/B first",
        at=now - timedelta(days=1),
    )
    _backdated(DeploymentChange.objects.get(action=DeploymentChange.Action.CHALLENGER_START), now - timedelta(days=1))
    _drift_reports(now=now)
    _traffic(now=now, experiment_id=experiment.pk, champion=v1.version, challenger=v3.version)
    for version in (v1, v2, v3):
        version.refresh_from_db()
    assert v1.status == ModelStatus.ACTIVE and v2.status == ModelStatus.REJECTED
    return History(v1=v1, v2=v2, v3=v3, experiment_id=experiment.pk, now=now)


def _drift_reports(*, now: datetime) -> None:
    for n, shift in enumerate((0.02, 0.08, 0.3)):
        report = DriftReport.objects.create(
            window_start=now - timedelta(days=7),
            window_end=now,
            events_in_window=1000,
            verdict="drift" if shift > 0.25 else "ok",
            feature_scores={
                "user_event_count": {"kind": "numeric", "psi": shift},
                "event_type": {"kind": "categorical", "psi": shift / 2},
            },
        )
        DriftReport.objects.filter(pk=report.pk).update(created_at=now - timedelta(hours=12 - n))


def _traffic(*, now: datetime, experiment_id: int, champion: int, challenger: int) -> None:
    """Lists served over the last two days; the first item of every other list is clicked with its id."""
    items = [Item.objects.create(external_id=f"item-{n}", title=f"Item {n}") for n in range(12)]
    for n in range(8):
        who = user(f"user-{n}")
        for hours in (40, 20, 2):
            treated = hours < 24 and n % 2 == 1
            shown = serve(
                who,
                items[n % 3 : n % 3 + 10],
                now - timedelta(hours=hours),
                version=challenger if treated else champion,
                arm="challenger" if treated else "champion",
                experiment=experiment_id if hours < 24 else None,
            )
            if n % 2 == 0 or hours == 2:
                event(who, items[n % 3], "click", now - timedelta(hours=hours) + timedelta(minutes=5), rec=shown)
    outcomes_recorded()  # as beat would: the online charts read outcome rows
