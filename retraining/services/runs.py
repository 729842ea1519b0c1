"""Training runs: request (single flight, enforced by the database), send, claim, heartbeat, finish, fail, and
the reconciler that fails stale runs (their worker died) and re-sends runs committed but never sent."""

import logging
import threading
import time
from contextlib import suppress
from datetime import datetime, timedelta

from celery import current_app
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from rest_framework.status import HTTP_503_SERVICE_UNAVAILABLE

from recommendations.clock import system_now
from recsite.errors import ApplicationError, ConflictError
from retraining.models import IN_FLIGHT, RunStatus, TrainingRun, Trigger

logger = logging.getLogger(__name__)

TRAINING_TASK = "retraining.training_run_process"
# The training task's name before it said what it does: messages queued then still carry it, so a task of that
# name stays registered (retraining/tasks.py). Nothing sends it any more.
TRAINING_TASK_FORMER_NAMES = ("retraining.training_run_execute",)
TRAINING_QUEUE = "training"
# A queued run unsent for this long was lost between commit and send (its process died): the reconciler re-sends it.
RESEND_AFTER = timedelta(seconds=10)


class RunInFlight(ConflictError):
    code = "run_in_flight"


class BrokerUnavailable(ApplicationError):
    status_code = HTTP_503_SERVICE_UNAVAILABLE
    code = "broker_unavailable"


def training_run_request(
    *,
    trigger: str,
    evidence: dict | None = None,
    requested_by: str = "",
    data_until: datetime | None = None,
    enqueue: bool = True,
    triggers: list[str] | None = None,
) -> TrainingRun:
    """Create a queued run and send it to the trainer once committed (`enqueue=False`: the caller processes it
    in-process). If a run is already in flight the database's unique constraint refuses the new row and
    RunInFlight carries the existing run's id, unless that run is stale: then it is failed and the new run
    takes its place, so a dead trainer never blocks the next request even with no beat and no worker running.
    If the broker cannot take the message, BrokerUnavailable is raised after the commit (see
    training_run_enqueue). `triggers`: every kind that fired, `trigger` first (default: just `trigger`)."""
    fields = dict(
        trigger=trigger,
        triggers=triggers or [str(trigger)],
        evidence=evidence or {},
        requested_by=requested_by,
        data_until=data_until,
        dispatched_at=None if enqueue else timezone.now(),
    )
    try:
        return _training_run_create(fields=fields, enqueue=enqueue)
    except RunInFlight:
        training_runs_fail_stale()
    return _training_run_create(fields=fields, enqueue=enqueue)  # RunInFlight again names the run in flight now


def _training_run_create(*, fields: dict, enqueue: bool) -> TrainingRun:
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(**fields)
            if enqueue:
                transaction.on_commit(lambda: training_run_enqueue(run_id=run.pk))
    except IntegrityError:
        existing = TrainingRun.objects.filter(in_flight=True).first()
        if existing is None:  # it finished in between: the caller may simply retry
            raise RunInFlight("A training run was in flight; retry.", extra={"run_id": None}) from None
        raise RunInFlight(
            f"Training run {existing.pk} is already {existing.status}.",
            extra={"run_id": existing.pk, "status": existing.status},
        ) from None
    return run


def training_run_enqueue(*, run_id: int) -> None:
    """Send a committed run to the trainer. If the broker cannot take it (after Celery's bounded publish retries)
    the run is failed at once, freeing the single-flight slot for the request that follows, and the caller gets
    BrokerUnavailable (a JSON 503 through the API)."""
    try:
        _training_run_send(run_id=run_id)
    except BrokerError as exc:
        training_run_fail(run_id=run_id, error=f"not started: the broker is unavailable ({exc})")
        raise BrokerUnavailable(
            "The task broker is unavailable, so the training run could not be started; retry later.",
            extra={"run_id": run_id},
        ) from exc


def _training_run_send(*, run_id: int) -> None:
    current_app.send_task(TRAINING_TASK, args=[run_id], queue=TRAINING_QUEUE)
    TrainingRun.objects.filter(pk=run_id, dispatched_at=None).update(dispatched_at=timezone.now())


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
    """Fail in-flight runs whose last sign of life (heartbeat; for a queued run, its sending or creation) is older
    than their lease: their worker died or their message was lost. The champion is untouched."""
    now = now or timezone.now()
    stale = []
    for run in TrainingRun.objects.filter(in_flight=True):
        last_seen = run.heartbeat_at or run.dispatched_at or run.created_at
        if last_seen < now - timedelta(seconds=run.lease_seconds):
            message = f"stale: no heartbeat since {last_seen:%Y-%m-%d %H:%M:%S} (lease {run.lease_seconds}s)"
            if training_run_fail(run_id=run.pk, error=message):
                stale.append(run.pk)
    return stale


def training_runs_reconcile(*, now: datetime | None = None) -> dict:
    """Fail stale runs, then re-send queued runs that were committed but never sent. Re-sending is safe: claiming
    is a conditional update, so of several messages for one run only the first does anything. While the broker
    is still down the runs stay unsent for the next pass (or go stale)."""
    now = now or timezone.now()
    failed = training_runs_fail_stale(now=now)
    unsent = TrainingRun.objects.filter(status=RunStatus.QUEUED, dispatched_at=None, created_at__lt=now - RESEND_AFTER)
    resent = []
    for run_id in unsent.values_list("pk", flat=True):
        try:
            _training_run_send(run_id=run_id)
        except BrokerError as exc:
            logger.warning("run %s not re-sent, the broker is unavailable: %s", run_id, exc)
            break
        resent.append(run_id)
    return {"failed_stale": failed, "resent": resent}


def training_runs_reconciler_start(*, every_seconds: float) -> threading.Thread:
    """Reconcile runs every `every_seconds` in a daemon thread of a worker's main process, so that stale runs are
    released and unsent runs re-sent even while beat is not running. The thread closes its database connection
    after each pass: a pool child forked meanwhile must not inherit a connection in use."""

    def loop() -> None:
        while True:
            time.sleep(every_seconds)
            try:
                outcome = training_runs_reconcile()
                if outcome["failed_stale"] or outcome["resent"]:
                    logger.warning("training runs reconciled: %s", outcome)
            except Exception:
                logger.exception("training run reconciliation failed; retrying in %ss", every_seconds)
            finally:
                with suppress(DatabaseError):
                    connection.close()

    thread = threading.Thread(target=loop, name="training-run-reconciler", daemon=True)
    thread.start()
    return thread


def retrain_request(*, requested_by: str, now: datetime | None = None) -> TrainingRun:
    """The one service behind the admin button, the API and `manage.py retrain`; the run's cut-off is `now`
    (default: the runtime's clock)."""
    return training_run_request(
        trigger=Trigger.MANUAL,
        requested_by=requested_by,
        data_until=now or system_now(),
        evidence={"requested_by": requested_by},
    )
