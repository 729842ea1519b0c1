import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry.selectors import champion_version
from retraining.models import TrainingRun
from retraining.services.pipeline import training_run_process
from retraining.services.runs import training_run_request
from retraining.services.triggers import triggers_check
from tests.retraining.factories import dataset_store, learnable_dataset
from tests.support.processes import start_process, stop_process, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)


def test_a_worker_killed_mid_training_leaves_the_champion_and_the_next_run_can_start(tmp_path, settings):
    settings.MODEL_STORE = tmp_path / "models"
    dataset_store(learnable_dataset(users=250, items=120, per_user=30))
    first = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    training_run_process(run_id=first.pk)
    champion = champion_version()
    assert champion is not None

    celery = str(Path(sys.executable).with_name("celery"))
    trainer = start_process(
        [
            celery,
            "-A",
            "recsite",
            "worker",
            "-Q",
            "training",
            "-c",
            "1",
            "--max-tasks-per-child",
            "1",
            "-n",
            f"doomed-{os.getpid()}@%h",
        ],
        tmp_path / "trainer.log",
        MODEL_STORE=str(settings.MODEL_STORE),
    )
    try:
        run = training_run_request(trigger="volume", data_until=CUTOFF)
        wait_until(
            lambda: TrainingRun.objects.get(pk=run.pk).status == "training", 60, 0.02, "the run to start training"
        )
        os.killpg(trainer.pid, signal.SIGKILL)  # the worker and its pool child: nothing gets to clean up
        trainer.wait(timeout=10)
    finally:
        stop_process(trainer)
    TrainingRun.objects.filter(pk=run.pk).update(lease_seconds=1)
    assert TrainingRun.objects.get(pk=run.pk).status == "training"  # nobody is left to finish it
    time.sleep(1.5)
    evaluation = triggers_check(now=CUTOFF)
    run.refresh_from_db()
    assert run.status == "failed" and "stale" in run.error
    assert f"failed stale runs [{run.pk}]" in evaluation.action
    assert champion_version() == champion
    next_run = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    training_run_process(run_id=next_run.pk)
    next_run.refresh_from_db()
    assert next_run.status in ("promoted", "rejected")
