from datetime import datetime, timezone

import pytest

from registry.models import DeploymentChange, ModelStatus
from registry.selectors import champion_version
from retraining.models import TrainingRun
from retraining.services import pipeline
from retraining.services.pipeline import training_run_process
from retraining.services.runs import training_run_request
from tests.retraining.factories import dataset_store, learnable_dataset

pytestmark = pytest.mark.django_db
CUTOFF = datetime(2025, 6, 1, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def model_store(settings, tmp_path):
    settings.MODEL_STORE = tmp_path / "store"


@pytest.fixture
def history():
    dataset_store(learnable_dataset(users=120, items=80, per_user=24))


def run_now(trigger="manual"):
    run = training_run_request(trigger=trigger, data_until=CUTOFF)
    training_run_process(run_id=run.pk)
    run.refresh_from_db()
    return run


def test_the_first_candidate_that_beats_the_baseline_becomes_champion(history):
    run = run_now()
    assert run.status == "promoted", run.gate
    version = run.model_version
    assert champion_version() == version and version.status == ModelStatus.ACTIVE
    assert version.training_run_id == run.pk and version.trigger_reason == "manual"
    assert run.gate["passed"] and run.gate["champion_version"] is None
    assert "drift_reference" in version.manifest and version.metrics["ndcg@10"] > version.baseline_metrics["popularity"]["ndcg@10"]
    assert DeploymentChange.objects.get().actor == "gate"
    assert {"load_events", "ranker_fit", "total"} <= set(run.stage_timings)
    assert any("promoted" in line for line in run.log)


def test_a_candidate_no_better_than_the_champion_is_rejected_and_the_champion_keeps_serving(history):
    first = run_now()
    second = run_now(trigger="volume")
    assert second.status == "rejected"
    assert champion_version() == first.model_version
    second.model_version.refresh_from_db()
    assert second.model_version.status == ModelStatus.REJECTED
    gate = second.gate
    assert not gate["passed"] and gate["champion_version"] == first.model_version.version
    # The same data and seed give the same model: re-scored on the same holdout, the two are equal.
    assert gate["numbers"]["candidate"]["ndcg@10"] == pytest.approx(gate["numbers"]["champion"]["ndcg@10"])
    assert gate["numbers"]["ndcg_difference"]["mean"] == pytest.approx(0.0)
    assert gate["numbers"]["candidate"]["ndcg@10"] == pytest.approx(second.model_version.metrics["ndcg@10"])


def test_a_failure_during_training_fails_the_run_and_leaves_the_champion(history, monkeypatch):
    first = run_now()

    def broken(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "training_run_execute", broken)
    run = training_run_request(trigger="drift", data_until=CUTOFF)
    with pytest.raises(RuntimeError):
        training_run_process(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "disk full" in run.error and run.in_flight is None
    assert champion_version() == first.model_version


def test_processing_a_run_twice_does_nothing_the_second_time(history):
    run = run_now()
    training_run_process(run_id=run.pk)
    assert TrainingRun.objects.get().status == "promoted"
    assert DeploymentChange.objects.count() == 1
