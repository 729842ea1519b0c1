"""Celery tasks: thin interfaces (ids in, state re-read, a service called). JSON only."""

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from retraining.services.pipeline import training_run_process
from retraining.services.rollout import rollout_check
from retraining.services.runs import training_run_fail
from retraining.services.triggers import triggers_check

TRAINING_SOFT_LIMIT_S = 3 * 3600
TRAINING_HARD_LIMIT_S = TRAINING_SOFT_LIMIT_S + 600  # both below the broker's visibility timeout (4 h)


@shared_task(name="retraining.check_triggers", ignore_result=True)
def check_triggers_task() -> int:
    return triggers_check().pk


@shared_task(name="retraining.check_rollout", ignore_result=True)
def check_rollout_task() -> str:
    check = rollout_check()
    return check.action if check else "no experiment"


def _fail_run(task, exc, task_id, args, kwargs, einfo):
    if args:
        training_run_fail(run_id=args[0], error=f"{type(exc).__name__}: {exc}")


@shared_task(
    name="retraining.training_run_execute",
    acks_late=True,
    soft_time_limit=TRAINING_SOFT_LIMIT_S,
    time_limit=TRAINING_HARD_LIMIT_S,
    on_failure=_fail_run,
    ignore_result=True,
)
def training_run_execute_task(run_id: int) -> None:
    """Run one training run end to end. A redelivered or duplicate message finds the run already claimed
    and does nothing."""
    try:
        training_run_process(run_id=run_id)
    except SoftTimeLimitExceeded:
        training_run_fail(run_id=run_id, error="soft time limit exceeded")
        raise
