import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsite.settings")

app = Celery("recsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _start_training_run_reconciler(**kwargs):
    """Every worker fails stale training runs and re-sends unsent ones, so neither waits for beat."""
    from django.conf import settings

    from retraining.services.runs import training_runs_reconciler_start

    training_runs_reconciler_start(every_seconds=settings.TRAINING_RECONCILE_SECONDS)
