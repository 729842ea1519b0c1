"""A dead trainer is noticed in about a minute, with or without beat: heartbeats keep coming through LightGBM's
native calls, a pool child's death fails its run at once, a whole trainer's death fails it when its lease runs
out (a reconciler runs in every worker), and a request facing a stale run fails it and goes ahead."""

import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lightgbm
import numpy as np
import pytest
from django.conf import settings as django_settings
from django.utils import timezone as django_timezone
from django_celery_beat.models import PeriodicTask

from recsite.celery import app
from registry.models import ModelVersion
from retraining.models import TrainingRun
from retraining.services import pipeline
from retraining.services.runs import TRAINING_TASK, training_run_claim, training_run_fail, training_run_request
from retraining.services.schedule import periodic_tasks_setup
from retraining.tasks import training_run_process_task
from tests.retraining.factories import dataset_store, learnable_dataset
from tests.support.processes import start_process, stop_process, wait_until

CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)
CELERY = str(Path(sys.executable).with_name("celery"))


def test_the_lease_heartbeat_and_checks_notice_a_dead_trainer_in_about_a_minute():
    assert django_settings.TRAINING_LEASE_SECONDS <= 60
    assert 3 * django_settings.TRAINING_HEARTBEAT_SECONDS <= django_settings.TRAINING_LEASE_SECONDS
    assert django_settings.TRAINING_RECONCILE_SECONDS <= 15


@pytest.mark.django_db
def test_the_beat_schedule_reconciles_training_runs_every_minute():
    periodic_tasks_setup(check_every_seconds=300)
    reconcile = PeriodicTask.objects.get(task="retraining.reconcile_runs")
    assert reconcile.enabled and reconcile.interval.every == 60 and reconcile.interval.period == "seconds"


@pytest.mark.skipif(not django_settings.CELERY_BROKER_URL.startswith("redis"), reason="visibility timeouts are Redis's")
def test_the_training_time_limits_sit_below_the_broker_visibility_timeout():
    task = app.tasks[TRAINING_TASK]
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert 0 < task.soft_time_limit < task.time_limit < visibility
    assert task.acks_late and not task.reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1


@pytest.mark.django_db
def test_a_requeued_message_for_a_failed_or_running_run_does_nothing():
    failed = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    training_run_fail(run_id=failed.pk, error="stale: no heartbeat")
    training_run_process_task(failed.pk)
    failed.refresh_from_db()
    assert failed.status == "failed" and failed.error == "stale: no heartbeat" and failed.started_at is None

    running = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    assert training_run_claim(run_id=running.pk)
    started_at = TrainingRun.objects.get(pk=running.pk).started_at
    training_run_process_task(running.pk)
    running.refresh_from_db()
    assert running.status == "training" and running.started_at == started_at and running.log == []
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_a_request_facing_a_stale_run_fails_it_and_starts_the_new_run_without_beat_or_workers():
    dead = training_run_request(trigger="volume", data_until=CUTOFF, enqueue=False)
    assert training_run_claim(run_id=dead.pk)
    silent_since = django_timezone.now() - timedelta(seconds=dead.lease_seconds + 1)
    TrainingRun.objects.filter(pk=dead.pk).update(heartbeat_at=silent_since)

    fresh = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    dead.refresh_from_db()
    assert dead.status == "failed" and "stale" in dead.error
    assert fresh.status == "queued" and list(TrainingRun.objects.filter(in_flight=True)) == [fresh]


def test_the_heartbeat_keeps_beating_through_a_long_lightgbm_native_call(settings, monkeypatch):
    rng = np.random.default_rng(0)
    features = rng.random((2000, 10))
    params = {"objective": "regression", "num_threads": 1, "verbose": -1, "num_leaves": 63}
    booster = lightgbm.train(params, lightgbm.Dataset(features, rng.random(2000)), num_boost_round=300)
    beats = []
    monkeypatch.setattr(pipeline, "training_run_heartbeat", lambda *, run_id: beats.append(time.monotonic()))
    settings.TRAINING_HEARTBEAT_SECONDS = 0.05

    # Sized so that the one call lasts about 1.5 s on this machine, however fast it is right now.
    probe_started = time.monotonic()
    booster.predict(rng.random((2_000, 10)), num_threads=1)
    rows = int(2_000 * 1.5 / max(time.monotonic() - probe_started, 1e-3))
    matrix = rng.random((min(max(rows, 10_000), 2_000_000), 10))

    with pipeline.training_run_heartbeats(run_id=0):
        started = time.monotonic()
        booster.predict(matrix, num_threads=1)  # one C call: LGBM_BoosterPredictForMat
        ended = time.monotonic()

    during = [beat for beat in beats if started <= beat <= ended]
    assert ended - started > 0.5, "the call must be long enough to tell"
    assert max(np.diff([started, *during, ended])) < 0.5


# --- Real worker processes, no beat -----------------------------------------------------------------------
def _worker(queue: str, log: Path, **env):
    process = start_process(
        [
            CELERY,
            "-A",
            "recsite",
            "worker",
            "-Q",
            queue,
            "-c",
            "1",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{queue}-{os.getpid()}@%h",
        ],
        log,
        **env,
    )
    wait_until(lambda: b"ready" in log.read_bytes() or process.poll() is not None, 60, 0.1, f"the {queue} worker")
    assert process.poll() is None, log.read_text()
    return process


def _training_run_started(settings, tmp_path, lease_seconds: int) -> TrainingRun:
    settings.TRAINING_LEASE_SECONDS = lease_seconds
    dataset_store(learnable_dataset(users=250, items=120, per_user=30))
    run = training_run_request(trigger="volume", data_until=CUTOFF)
    wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status == "training", 90, 0.02, "the run to start training")
    return run


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_trainer_killed_mid_run_is_noticed_within_its_lease_by_another_worker_without_beat(settings, tmp_path):
    store = str(tmp_path / "models")
    settings.MODEL_STORE = store
    other = _worker("default", tmp_path / "default.log", MODEL_STORE=store, TRAINING_RECONCILE_SECONDS="1")
    trainer = _worker("training", tmp_path / "trainer.log", MODEL_STORE=store, TRAINING_HEARTBEAT_SECONDS="0.5")
    try:
        run = _training_run_started(settings, tmp_path, lease_seconds=4)
        first_beat = TrainingRun.objects.get(pk=run.pk).heartbeat_at
        wait_until(lambda: TrainingRun.objects.get(pk=run.pk).heartbeat_at > first_beat, 10, 0.1, "a heartbeat")
        os.killpg(trainer.pid, signal.SIGKILL)  # the worker and its pool child: nothing gets to clean up
        trainer.wait(timeout=10)
        killed = time.monotonic()
        wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status == "failed", 30, 0.1, "the run to be failed")
    finally:
        stop_process(trainer)
        stop_process(other)
    run.refresh_from_db()
    assert "stale" in run.error
    assert time.monotonic() - killed < 4 + 1 + 10  # lease + check interval + slack for a loaded machine
    assert not TrainingRun.objects.filter(in_flight=True).exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_pool_child_killed_mid_run_has_its_run_failed_at_once_by_the_worker_that_lost_it(settings, tmp_path):
    store = str(tmp_path / "models")
    settings.MODEL_STORE = store
    trainer = _worker("training", tmp_path / "trainer.log", MODEL_STORE=store)
    try:
        run = _training_run_started(settings, tmp_path, lease_seconds=60)
        (child,) = Path(f"/proc/{trainer.pid}/task/{trainer.pid}/children").read_text().split()  # the pool child
        os.kill(int(child), signal.SIGKILL)
        wait_until(lambda: TrainingRun.objects.get(pk=run.pk).status == "failed", 20, 0.1, "the run to be failed")
    finally:
        stop_process(trainer)
    run.refresh_from_db()
    assert "the training worker died" in run.error  # failed on the spot, long before its 60 s lease ran out


@pytest.mark.django_db
def test_a_run_declared_stale_while_still_training_registers_and_promotes_nothing(settings, tmp_path, monkeypatch):
    settings.MODEL_STORE = tmp_path / "models"
    dataset_store(learnable_dataset(users=160, items=120, per_user=30))
    run = training_run_request(trigger="manual", data_until=CUTOFF, enqueue=False)
    train = pipeline.model_train

    def train_then_go_stale(**kwargs):
        result = train(**kwargs)
        training_run_fail(run_id=run.pk, error="stale: no heartbeat")  # what the reconciler does meanwhile
        return result

    monkeypatch.setattr(pipeline, "model_train", train_then_go_stale)
    with pytest.raises(RuntimeError, match="no longer in flight"):
        pipeline.training_run_process(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and run.error == "stale: no heartbeat"
    assert not ModelVersion.objects.exists()
