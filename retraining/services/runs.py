"""Training runs: request (single flight, enforced by the database), claim, heartbeat, finish, fail,
and the detection of stale runs whose worker died."""

from datetime import datetime, timedelta

from celery import current_app
from django.db import IntegrityError, transaction
from django.utils import timezone

from recsite.errors import ConflictError
from recommendations.clock import system_now
from retraining.models import IN_FLIGHT, RunStatus, Trigger, TrainingRun

TRAINING_TASK = "retraining.training_run_execute"
TRAINING_QUEUE = "training"


class RunInFlight(ConflictError):
    code = "run_in_flight"


def training_run_request(*, trigger: str, evidence: dict | None = None, requested_by: str = "",
                         data_until: datetime | None = None, enqueue: bool = True) -> TrainingRun:
    """Create a queued run and enqueue it once committed (`enqueue=False`: the caller processes it
    in-process). If a run is already in flight the database's unique constraint refuses the new row and
    RunInFlight carries the existing run's id."""
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(
                trigger=trigger, evidence=evidence or {}, requested_by=requested_by, data_until=data_until
            )
            if enqueue:
                transaction.on_commit(lambda: training_run_enqueue(run_id=run.pk))
    except IntegrityError:
        existing = TrainingRun.objects.filter(in_flight=True).first()
        if existing is None:  # it finished in between: the caller may simply retry
            raise RunInFlight("A training run was in flight; retry.", extra={"run_id": None})
        raise RunInFlight(
            f"Training run {existing.pk} is already {existing.status}.",
            extra={"run_id": existing.pk, "status": existing.status},
        )
    return run


def training_run_enqueue(*, run_id: int) -> None:
    current_app.send_task(TRAINING_TASK, args=[run_id], queue=TRAINING_QUEUE)


def training_run_claim(*, run_id: int) -> bool:
    """Move a queued run to training. False if it is not queued (already claimed, finished or failed),
    which makes a redelivered task a no-op."""
    now = timezone.now()
    return (
        TrainingRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
            status=RunStatus.TRAINING, started_at=now, heartbeat_at=now
        )
        == 1
    )


def training_run_advance(*, run_id: int, status: str, **fields) -> bool:
    """Set an in-flight run's status (and stamp fields); False if the run is no longer in flight, e.g.
    because it was declared stale meanwhile."""
    values = {"status": status, "heartbeat_at": timezone.now(), **fields}
    if status not in IN_FLIGHT:
        values.update(in_flight=None, finished_at=timezone.now())
    return TrainingRun.objects.filter(pk=run_id, status__in=IN_FLIGHT).update(**values) == 1


def training_run_heartbeat(*, run_id: int, line: str | None = None) -> None:
    updates = {"heartbeat_at": timezone.now()}
    run = TrainingRun.objects.filter(pk=run_id, status__in=IN_FLIGHT)
    if line is None:
        run.update(**updates)
        return
    stamped = f"{timezone.now():%H:%M:%S} {line}"
    with transaction.atomic():
        current = run.select_for_update().first()
        if current is not None:
            current.log = [*current.log, stamped][-500:]
            current.heartbeat_at = updates["heartbeat_at"]
            current.save(update_fields=["log", "heartbeat_at"])


def training_run_fail(*, run_id: int, error: str) -> bool:
    return training_run_advance(run_id=run_id, status=RunStatus.FAILED, error=error[:10_000])


def training_runs_fail_stale(*, now: datetime | None = None) -> list[int]:
    """Fail in-flight runs whose last sign of life (heartbeat, or creation for a queued run) is older
    than their lease: their worker died or their message was lost. The champion is untouched."""
    now = now or timezone.now()
    stale = []
    for run in TrainingRun.objects.filter(in_flight=True):
        last_seen = run.heartbeat_at or run.created_at
        if last_seen < now - timedelta(seconds=run.lease_seconds):
            message = f"stale: no heartbeat since {last_seen:%Y-%m-%d %H:%M:%S} (lease {run.lease_seconds}s)"
            if training_run_fail(run_id=run.pk, error=message):
                stale.append(run.pk)
    return stale


def retrain_request(*, requested_by: str) -> TrainingRun:
    """The one service behind the admin button, the API and `manage.py retrain`."""
    return training_run_request(trigger=Trigger.MANUAL, requested_by=requested_by, data_until=system_now(),
                                evidence={"requested_by": requested_by})
