"""Celery tasks: thin interfaces (ids in, state re-read, a service called). JSON only."""

from billiard.exceptions import WorkerLostError
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_failure
from django.conf import settings

from retraining.services.comparison import COMPARISON_TASK, version_comparison_compute, version_comparison_fail
from retraining.services.mlflow_mirror import MIRROR_TASK, MirrorBusy, mlflow_mirror
from retraining.services.pipeline import training_run_process
from retraining.services.retention import event_partitions_apply
from retraining.services.rollout import rollout_check
from retraining.services.runs import (
    TRAINING_TASK,
    TRAINING_TASK_FORMER_NAMES,
    training_run_fail,
    training_runs_reconcile,
)
from retraining.services.triggers import triggers_check


@shared_task(name="retraining.check_triggers", ignore_result=True)
def check_triggers_task() -> int:
    return triggers_check().pk


@shared_task(name="retraining.check_rollout", ignore_result=True)
def check_rollout_task() -> str:
    check = rollout_check()
    return check.action if check else "no experiment"


@shared_task(name="retraining.reconcile_runs", ignore_result=True)
def reconcile_runs_task() -> dict:
    return training_runs_reconcile()


@shared_task(name="retraining.maintain_event_partitions", ignore_result=True)
def maintain_event_partitions_task() -> dict:
    return event_partitions_apply()


def _fail_run(task, exc, task_id, args, kwargs, einfo):
    if args:
        training_run_fail(run_id=args[0], error=f"{type(exc).__name__}: {exc}")


TRAINING_TASK_OPTIONS = {
    "acks_late": True,
    # A pool child killed mid-run (OOM, kill -9) acks the message and fails the run (below) rather than requeue
    # it: a requeued message could only find the run already claimed, and do nothing.
    "reject_on_worker_lost": False,
    "soft_time_limit": settings.TRAINING_SOFT_TIME_LIMIT,
    "time_limit": settings.TRAINING_TIME_LIMIT,  # both below the broker's visibility timeout (checked by settings)
    "on_failure": _fail_run,
    "ignore_result": True,
}


def _training_run_process(run_id: int) -> None:
    """Run one training run end to end. A redelivered or duplicate message finds the run already claimed (or
    finished, or failed) and does nothing."""
    try:
        training_run_process(run_id=run_id)
    except SoftTimeLimitExceeded:
        training_run_fail(run_id=run_id, error="soft time limit exceeded")
        raise


training_run_process_task = shared_task(name=TRAINING_TASK, **TRAINING_TASK_OPTIONS)(_training_run_process)
# The same task under its former names, for messages queued before the rename (see TRAINING_TASK_FORMER_NAMES).
former_training_tasks = [
    shared_task(name=name, **TRAINING_TASK_OPTIONS)(_training_run_process) for name in TRAINING_TASK_FORMER_NAMES
]


def _fail_comparison(task, exc, task_id, args, kwargs, einfo):
    if args:
        version_comparison_fail(comparison_id=args[0], error=f"{type(exc).__name__}: {exc}")


@shared_task(
    name=COMPARISON_TASK,
    acks_late=True,
    reject_on_worker_lost=False,
    soft_time_limit=settings.TRAINING_SOFT_TIME_LIMIT,
    time_limit=settings.TRAINING_TIME_LIMIT,
    on_failure=_fail_comparison,
    ignore_result=True,
)
def version_comparison_compute_task(comparison_id: int) -> None:
    """Compute one comparison. A duplicate or redelivered message finds it claimed or finished and does nothing."""
    version_comparison_compute(comparison_id=comparison_id)


@task_failure.connect
def _fail_run_of_lost_worker(sender=None, exception=None, args=None, **kwargs):
    """The worker's main process reports a pool child that died mid-task (the child could not run on_failure):
    its run is failed at once instead of waiting for its lease to expire."""
    if (
        getattr(sender, "name", None) in (TRAINING_TASK, *TRAINING_TASK_FORMER_NAMES)
        and isinstance(exception, WorkerLostError)
        and args
    ):
        training_run_fail(run_id=args[0], error=f"the training worker died: {exception}")


@shared_task(name=MIRROR_TASK, bind=True, ignore_result=True, max_retries=200)
def mlflow_mirror_task(
    self, run_id: int | None = None, version: int | None = None, change_id: int | None = None
) -> bool:
    """Mirror a training run, a version or the pointers after a change to MLflow. A failure is counted, not raised
    (MLflow is a mirror); while another worker holds the mirror's lease, retried every few seconds."""
    try:
        return mlflow_mirror(run_id=run_id, version=version, change_id=change_id)
    except MirrorBusy as exc:
        raise self.retry(exc=exc, countdown=3) from exc
