"""The optional MLflow mirror, against a real local MLflow store (mlflow-skinny's file store: tracking, model registry
and aliases; its sqlite store and `mlflow server` need SQLAlchemy and more, which skinny does not install) and, for
failures, against a closed port. Celery runs eagerly here, after commit, as a worker would run the task."""

import os
import re
import socket
import time
import uuid
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as conf
from django.core.management import CommandError, call_command
from django.db import transaction
from mlflow import MlflowClient

from recsite.celery import app as celery_app
from registry.models import ModelStatus, ModelVersion
from registry.services import (
    ChallengerInput,
    challenger_start,
    model_version_promote,
    model_version_rollback,
)
from retraining.models import MlflowMirror
from retraining.services import mlflow_mirror
from retraining.services.mlflow_mirror import MirrorBusy, mlflow_mirror_counts, mlflow_sync
from retraining.services.pipeline import training_run_process
from retraining.services.runs import training_run_request
from tests.registry.factories import registered_version
from tests.retraining.factories import dataset_store, learnable_dataset
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db
CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def model_store(settings, tmp_path):
    settings.MODEL_STORE = tmp_path / "store"
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = eager


@pytest.fixture
def mlflow_store(settings, tmp_path, monkeypatch) -> MlflowClient:
    """A fresh file store; or, with RECSITE_TEST_MLFLOW_URI (e.g. http://127.0.0.1:18501), a running MLflow server,
    each test in an experiment and a registered model of its own."""
    uri = os.environ.get("RECSITE_TEST_MLFLOW_URI") or (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's opt-in for its file store
    settings.MLFLOW_TRACKING_URI = settings.MLFLOW_REGISTRY_URI = uri
    settings.MLFLOW_EXPERIMENT_NAME = f"recsite-{tmp_path.name}-{uuid.uuid4().hex[:8]}"
    settings.MLFLOW_REGISTERED_MODEL = f"recsite-ranker-{uuid.uuid4().hex[:8]}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model() -> str:
    return conf.MLFLOW_REGISTERED_MODEL


@pytest.fixture
def history():
    dataset_store(learnable_dataset(users=120, items=80, per_user=24))


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run a block as if it committed: its on-commit callbacks (the registry's hooks, the task sends) run after it."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def run_now(commit, trigger="manual"):
    run = training_run_request(trigger=trigger, data_until=CUTOFF, enqueue=False)
    with commit():
        training_run_process(run_id=run.pk)
    run.refresh_from_db()
    return run


def mlflow_run_of(client: MlflowClient, version: int):
    experiment = client.get_experiment_by_name(conf.MLFLOW_EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], f"tags.`recsite.model_version` = '{version}'")
    assert len(runs) == 1, runs
    return runs[0]


def champion_alias(client: MlflowClient) -> str:
    return client.get_model_version_by_alias(model(), "champion").tags["recsite.version"]


def test_a_training_run_appears_in_mlflow_with_its_metrics_parameters_gate_artifact_and_the_champion_alias(
    history, mlflow_store, commit
):
    run = run_now(commit)
    assert run.status == "promoted", run.gate
    version = run.model_version
    mirrored = mlflow_run_of(mlflow_store, version.version)

    metrics, params, tags = mirrored.data.metrics, mirrored.data.params, mirrored.data.tags
    assert metrics["ndcg_at_10"] == pytest.approx(version.metrics["ndcg@10"])
    assert metrics["rmse"] == pytest.approx(version.metrics["rmse"])
    popularity = version.baseline_metrics["popularity"]["ndcg@10"]
    assert metrics["baseline.popularity.ndcg_at_10"] == pytest.approx(popularity)
    assert any(name.startswith("dataset.") for name in metrics), metrics
    assert metrics["timing_s.total"] == pytest.approx(run.stage_timings["total"])
    assert metrics["model_size_bytes"] == version.artifact_size and metrics["gate.passed"] == 1.0
    assert params["training_window_end"] == str(version.training_window_end)
    assert {name.split(".")[0] for name in params} >= {name for name in version.parameters}
    assert tags["recsite.trigger"] == "manual" and tags["recsite.training_run"] == str(run.pk)
    assert tags["recsite.gate"] == "passed" and tags["recsite.artifact_sha256"] == version.artifact_sha256
    assert mirrored.info.status == "FINISHED"

    artifacts = {item.path: item for item in mlflow_store.list_artifacts(mirrored.info.run_id, "model")}
    tar = artifacts[f"model/{Path(version.artifact_path).name}"]
    assert tar.file_size == version.artifact_size
    assert "gate.json" in {item.path for item in mlflow_store.list_artifacts(mirrored.info.run_id)}

    model_version = mlflow_store.get_model_version_by_alias(model(), "champion")
    assert model_version.tags == {
        "recsite.version": "1",
        "recsite.sha256": version.artifact_sha256,
        "recsite.status": ModelStatus.ACTIVE,
    }
    assert model_version.run_id == mirrored.info.run_id
    assert mlflow_mirror_counts()["failures"] == 0 and mlflow_mirror_counts()["successes"] >= 2


def test_champion_and_challenger_aliases_follow_promotions_rollbacks_and_experiments_without_duplicates(
    history, mlflow_store, commit
):
    first = run_now(commit)
    second = run_now(commit, trigger="volume")  # no newer data than the champion's cut-off: rejected
    assert (first.status, second.status) == ("promoted", "rejected")
    rejected = mlflow_store.search_model_versions(f"name = '{model()}' and tag.`recsite.version` = '2'")
    assert [each.tags["recsite.status"] for each in rejected] == [ModelStatus.REJECTED]
    assert mlflow_run_of(mlflow_store, 2).data.tags["recsite.gate"] == "refused"
    assert champion_alias(mlflow_store) == "1"

    with commit():
        challenger_start(data=ChallengerInput(version=2, mode="shadow"), actor="ops", reason="try it", at=CUTOFF)
    assert mlflow_store.get_model_version_by_alias(model(), "challenger").tags["recsite.version"] == "2"
    with commit():
        model_version_promote(version=2, actor="ops", reason="operator's call")  # ends the experiment too
    assert champion_alias(mlflow_store) == "2"
    assert "challenger" not in mlflow_store.get_registered_model(model()).aliases
    with commit():
        model_version_rollback(actor="ops", reason="back")
    assert champion_alias(mlflow_store) == "1"
    statuses = {
        each.tags["recsite.version"]: each.tags["recsite.status"]
        for each in mlflow_store.search_model_versions(f"name = '{model()}'")
    }
    assert statuses == {"1": ModelStatus.ACTIVE, "2": ModelStatus.RETIRED}

    mlflow_sync()  # everything again: found by its tags, nothing duplicated
    out = StringIO()
    call_command("mlflow_sync", stdout=out)
    assert out.getvalue().strip() == "mirrored 2 training runs and 2 versions to MLflow"
    experiment = mlflow_store.get_experiment_by_name(conf.MLFLOW_EXPERIMENT_NAME).experiment_id
    assert len(mlflow_store.search_runs([experiment])) == 2
    assert len(mlflow_store.search_model_versions(f"name = '{model()}'")) == 2
    assert champion_alias(mlflow_store) == "1" and mlflow_mirror_counts()["failures"] == 0


def test_with_mlflow_down_training_and_promotion_succeed_quickly_and_the_failures_are_counted(
    history, settings, commit
):
    settings.MLFLOW_TRACKING_URI = settings.MLFLOW_REGISTRY_URI = f"http://127.0.0.1:{free_port()}"
    run = run_now(commit)
    assert run.status == "promoted" and ModelVersion.objects.get().status == ModelStatus.ACTIVE
    counts = mlflow_mirror_counts()
    assert counts["failures"] == 2 and counts["successes"] == 0  # the run's mirror and the promotion's
    assert (
        "ConnectionError" in MlflowMirror.objects.get().last_error
        or "Max retries" in MlflowMirror.objects.get().last_error
    )

    started = time.monotonic()
    assert mlflow_mirror.mlflow_mirror(run_id=run.pk) is False
    assert time.monotonic() - started < 15, "a dead MLflow must not hold a mirror for minutes"
    assert mlflow_mirror_counts()["failures"] == 3
    assert MlflowMirror.objects.get().claimed_until is None, "a failed mirror releases its lease"


def test_the_http_bounds_are_in_the_environment_mlflow_reads():
    assert int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 5
    assert int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 2


def test_a_server_that_never_answers_holds_a_mirror_only_for_the_configured_timeout(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        settings.MLFLOW_TRACKING_URI = settings.MLFLOW_REGISTRY_URI = f"http://127.0.0.1:{silent.getsockname()[1]}"
        version = registered_version(tmp_path)
        started = time.monotonic()
        assert mlflow_mirror.mlflow_mirror(version=version.version) is False
        elapsed = time.monotonic() - started
    # 3 attempts of 1 s and the backoff between them (about 2 s, jittered): seconds, not MLflow's default minutes.
    assert 3 <= elapsed < 12, elapsed
    assert mlflow_mirror_counts()["failures"] == 1 and "timed out" in MlflowMirror.objects.get().last_error.lower()


def test_a_pointer_change_is_sent_to_the_mirror_after_commit_and_never_when_it_rolls_back(
    settings, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    settings.MLFLOW_TRACKING_URI = "http://127.0.0.1:1"
    sent = []
    monkeypatch.setattr("retraining.tasks.mlflow_mirror_task.apply_async", lambda kwargs: sent.append(kwargs))
    version = registered_version(tmp_path)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        model_version_promote(version=version.version, actor="ops")
        assert sent == [], "nothing is sent inside the pointer's transaction"
        raise RuntimeError("rolled back")
    assert sent == []
    with django_capture_on_commit_callbacks(execute=True):
        change = model_version_promote(version=version.version, actor="ops")
    assert sent == [{"change_id": change.pk}]


def test_without_a_tracking_uri_nothing_is_sent(settings, tmp_path, monkeypatch, django_capture_on_commit_callbacks):
    settings.MLFLOW_TRACKING_URI = ""
    sent = []
    monkeypatch.setattr("retraining.tasks.mlflow_mirror_task.apply_async", lambda kwargs: sent.append(kwargs))
    with django_capture_on_commit_callbacks(execute=True):
        model_version_promote(version=registered_version(tmp_path).version, actor="ops")
    assert sent == [] and mlflow_mirror_counts() == {"successes": 0, "failures": 0}


def test_a_broker_that_refuses_the_mirror_task_is_counted_and_the_promotion_stands(
    settings, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    settings.MLFLOW_TRACKING_URI = "http://127.0.0.1:1"

    def refuse(kwargs):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr("retraining.tasks.mlflow_mirror_task.apply_async", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        model_version_promote(version=registered_version(tmp_path).version, actor="ops")
    assert ModelVersion.objects.get().status == ModelStatus.ACTIVE
    assert mlflow_mirror_counts()["failures"] == 1 and "broker down" in MlflowMirror.objects.get().last_error


def test_one_mirror_at_a_time_and_a_lease_left_by_a_dead_worker_expires(mlflow_store):
    from django.utils import timezone

    MlflowMirror.objects.create(pk=1, claimed_until=timezone.now() + mlflow_mirror.LEASE)
    with pytest.raises(MirrorBusy):
        mlflow_mirror.mlflow_mirror(change_id=None)
    MlflowMirror.objects.filter(pk=1).update(claimed_until=timezone.now() - mlflow_mirror.LEASE)
    assert mlflow_mirror.mlflow_mirror(change_id=None) is True


def test_the_registry_imports_no_mlflow():
    registry = Path(__file__).resolve().parents[2] / "registry"
    importing = re.compile(r"^\s*(import|from)\s+(mlflow|retraining)\b", re.MULTILINE)
    assert not [path for path in registry.rglob("*.py") if importing.search(path.read_text())]


def test_a_failed_training_run_appears_in_mlflow_as_failed_with_its_error(mlflow_store, commit):
    run = training_run_request(trigger="drift", data_until=CUTOFF, enqueue=False)
    with commit(), pytest.raises(ValueError, match="too few events"):
        training_run_process(run_id=run.pk)  # no events to train on
    run.refresh_from_db()
    assert run.status == "failed", run.error
    experiment = mlflow_store.get_experiment_by_name(conf.MLFLOW_EXPERIMENT_NAME).experiment_id
    [mirrored] = mlflow_store.search_runs([experiment], f"tags.`recsite.training_run` = '{run.pk}'")
    assert mirrored.info.status == "FAILED" and mirrored.data.tags["recsite.trigger"] == "drift"
    assert mirrored.data.tags["recsite.error"] == run.error[:6000] and run.error
    assert mlflow_store.search_registered_models(f"name = '{model()}'") == []


def test_mlflow_sync_without_a_tracking_uri_says_so(settings):
    settings.MLFLOW_TRACKING_URI = ""
    with pytest.raises(CommandError, match="MLFLOW_TRACKING_URI is not set"):
        call_command("mlflow_sync")
