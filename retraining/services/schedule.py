"""The beat schedule, kept in django-celery-beat's tables (DatabaseScheduler) by update-or-create."""

from django_celery_beat.models import IntervalSchedule, PeriodicTask

CHECK_TRIGGERS = "retraining: check triggers"


def periodic_tasks_setup(*, check_every_seconds: int) -> PeriodicTask:
    """Create or update the trigger check; other periodic tasks are left alone (never delete-all)."""
    schedule, _ = IntervalSchedule.objects.get_or_create(every=check_every_seconds, period=IntervalSchedule.SECONDS)
    task, _ = PeriodicTask.objects.update_or_create(
        name=CHECK_TRIGGERS,
        defaults={"task": "retraining.check_triggers", "interval": schedule, "enabled": True, "queue": "default",
                  "description": "Evaluate the retraining triggers and start a run when one fires."},
    )
    return task
