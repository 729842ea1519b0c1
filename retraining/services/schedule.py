"""The beat schedule, kept in django-celery-beat's tables (DatabaseScheduler) by update-or-create."""

from django_celery_beat.models import IntervalSchedule, PeriodicTask

CHECK_TRIGGERS = "retraining: check triggers"
CHECK_ROLLOUT = "retraining: check rollout"
RECONCILE_RUNS = "retraining: reconcile training runs"
RECORD_OUTCOMES = "recommendations: record online outcomes"
MAINTAIN_EVENT_PARTITIONS = "recommendations: event partitions and retention"
ROLLOUT_CHECK_SECONDS = 60
RECONCILE_RUNS_SECONDS = 60
RECORD_OUTCOMES_SECONDS = 60  # as often as the rollout check that reads them
MAINTAIN_EVENT_PARTITIONS_SECONDS = 3600  # partitions are made months ahead: hourly leaves days to spare


def periodic_tasks_setup(
    *, check_every_seconds: int, rollout_every_seconds: int = ROLLOUT_CHECK_SECONDS
) -> list[PeriodicTask]:
    """Create or update the trigger check, the rollout check, the training-run reconciler, the outcome recorder and
    the event partitions' maintenance; other periodic tasks are left alone (never delete-all)."""
    return [
        trigger_check_schedule(every_seconds=check_every_seconds),
        _interval_task(
            CHECK_ROLLOUT,
            "retraining.check_rollout",
            rollout_every_seconds,
            "Judge the running experiment; advance, promote or roll back a canary.",
        ),
        _interval_task(
            RECONCILE_RUNS,
            "retraining.reconcile_runs",
            RECONCILE_RUNS_SECONDS,
            "Fail training runs whose trainer died; re-send runs committed but never sent.",
        ),
        _interval_task(
            RECORD_OUTCOMES,
            "recommendations.outcomes_record",
            RECORD_OUTCOMES_SECONDS,
            "Record what each served list earned once its attribution window has closed.",
        ),
        _interval_task(
            MAINTAIN_EVENT_PARTITIONS,
            "retraining.maintain_event_partitions",
            MAINTAIN_EVENT_PARTITIONS_SECONDS,
            "Create the events' monthly partitions ahead; drop the months past the policy's retention.",
        ),
    ]


def trigger_check_schedule(*, every_seconds: int) -> PeriodicTask:
    """Create or move the trigger check to every `every_seconds`. Saving the PeriodicTask bumps
    PeriodicTasks.changed, which a running beat (DatabaseScheduler) polls, so beat follows without a restart."""
    return _interval_task(
        CHECK_TRIGGERS,
        "retraining.check_triggers",
        every_seconds,
        "Evaluate the retraining triggers and start a run when one fires.",
    )


def _interval_task(name: str, task: str, seconds: int, description: str) -> PeriodicTask:
    schedule, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
    periodic, _ = PeriodicTask.objects.update_or_create(
        name=name,
        defaults={"task": task, "interval": schedule, "enabled": True, "queue": "default", "description": description},
    )
    return periodic
