import os
import time
from pathlib import Path

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_shutdown, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsite.settings")

# A worker started with CELERY_METRICS_PORT exports its metrics there (README, "Metrics"). Its pool processes
# count in prometheus_client's multiprocess mode, in a folder of this worker's own, which must be known before
# prometheus_client is first imported: hence here, at the app's import.
METRICS_PORT = os.environ.get("CELERY_METRICS_PORT", "")
if METRICS_PORT:
    _var = Path(os.environ.get("RECSITE_VAR_DIR") or Path(__file__).resolve().parent.parent / "var")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_var / "metrics" / f"celery-{METRICS_PORT}"))

app = Celery("recsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _start_training_run_reconciler(**kwargs):
    """Every worker fails stale training runs and re-sends unsent ones, so neither waits for beat."""
    from django.conf import settings

    from retraining.services.runs import training_runs_reconciler_start

    training_runs_reconciler_start(every_seconds=settings.TRAINING_RECONCILE_SECONDS)


@worker_init.connect
def _start_metrics_exporter(**kwargs):
    """The worker's main process serves its pool's metrics, added up, on CELERY_METRICS_PORT (bound to
    CELERY_METRICS_ADDRESS, default 127.0.0.1), after emptying its folder of a previous run's files."""
    if not METRICS_PORT:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from recsite.metrics import multiprocess_dir, multiprocess_dir_reset

    multiprocess_dir_reset(multiprocess_dir(), keep_pid=os.getpid())
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(int(METRICS_PORT), addr=os.environ.get("CELERY_METRICS_ADDRESS", "127.0.0.1"), registry=registry)


@worker_process_shutdown.connect
def _leave_live_gauges(pid=None, **kwargs):
    from recsite.metrics import process_dead_mark

    process_dead_mark(pid or os.getpid())


@task_prerun.connect
def _task_started(task=None, **kwargs):
    task.request.metrics_started = time.perf_counter()


@task_postrun.connect
def _task_counted(task=None, state=None, **kwargs):
    from recsite.metrics import celery_task_count

    started = getattr(task.request, "metrics_started", None)
    celery_task_count(
        task=task.name,
        outcome=(state or "unknown").lower(),
        seconds=None if started is None else time.perf_counter() - started,
    )
