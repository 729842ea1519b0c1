from datetime import UTC, datetime

import pytest

import retraining.tasks  # noqa: F401  (registers the tasks, as a worker's autodiscovery does)
from recsite.celery import app
from retraining.models import RunStatus, TrainingRun
from retraining.services.runs import TRAINING_TASK, TRAINING_TASK_FORMER_NAMES, training_run_request
from tests.retraining.factories import dataset_store, learnable_dataset

pytestmark = pytest.mark.django_db
CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)


def test_the_training_task_is_named_after_the_service_it_runs():
    assert TRAINING_TASK == "retraining.training_run_process" and TRAINING_TASK in app.tasks


@pytest.mark.parametrize("name", TRAINING_TASK_FORMER_NAMES)
def test_a_message_queued_under_the_training_tasks_former_name_still_runs_the_training_run(name):
    dataset_store(learnable_dataset(users=60, items=40, per_user=16))
    run = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    app.tasks[name].apply(args=[run.pk])
    run.refresh_from_db()
    assert run.status in (RunStatus.PROMOTED, RunStatus.REJECTED) and run.model_version is not None


def test_the_former_name_does_nothing_to_a_run_that_is_already_finished():
    run = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    TrainingRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED, in_flight=None, error="gone")
    app.tasks[TRAINING_TASK_FORMER_NAMES[0]].apply(args=[run.pk])
    run.refresh_from_db()
    assert (run.status, run.error) == (RunStatus.FAILED, "gone")
