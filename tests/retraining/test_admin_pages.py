"""The retraining admin pages read cleanly: gate decisions, trigger results and drift extras as sentences, tables
and definition lists with rounded numbers; no "X object (1)"; the experiment form never defaults to a rejected
version."""

import re
from datetime import UTC, datetime

import pytest

from registry.models import Experiment, ModelStatus, ModelVersion
from retraining.models import DriftReport, RunStatus, TrainingRun, TriggerEvaluation
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db
CLOCK = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)


def test_a_training_runs_gate_and_timings_read_without_raw_json(staff_client):
    run = TrainingRun.objects.create(
        trigger="manual",
        status=RunStatus.REJECTED,
        in_flight=None,
        stage_timings={"train": 4.814395558000001},
        evidence={"events_since": 1200},
        gate={
            "passed": False,
            "reasons": ["Δ below −0.01"],
            "failures": ["Δ below −0.01"],
            "numbers": {"candidate": {"ndcg@10": 0.123456789}},
        },
    )
    html = staff_client.get(f"/admin/retraining/trainingrun/{run.pk}/change/").content.decode()
    assert "Refused" in html and "Δ below −0.01" in html and "\\u" not in html
    assert "0.1235" in html and "0.123456789" not in html
    assert "4.8 s" in html and "<dt>events_since</dt><dd>1,200</dd>" in html
    assert 'name="_save"' not in html


def test_a_trigger_evaluation_has_a_readable_name_and_its_results_as_a_list():
    evaluation = TriggerEvaluation.objects.create(
        clock=CLOCK, fired="volume", results={"volume": {"verdict": "fire", "value": 0.333333333}}
    )
    assert str(evaluation) == "trigger check at 2026-03-04 05:06: volume fired"


def test_a_trigger_evaluations_page_shows_its_results_rounded(staff_client):
    evaluation = TriggerEvaluation.objects.create(clock=CLOCK, results={"volume": {"verdict": "quiet", "value": 1 / 3}})
    html = staff_client.get(f"/admin/retraining/triggerevaluation/{evaluation.pk}/change/").content.decode()
    assert "TriggerEvaluation object" not in html and "nothing fired" in html
    assert "<dt>value</dt><dd>0.3333</dd>" in html and "0.33333333" not in html


def test_a_drift_reports_extras_are_tables_with_rounded_numbers(staff_client):
    report = DriftReport.objects.create(
        window_start=CLOCK,
        window_end=CLOCK,
        events_in_window=10,
        verdict="ok",
        drifted_share=0.1666666667,
        duration_s=0.52345,
        extra_scores={"event_type_mix": {"psi": 0.0123456789, "verdict": "ok"}},
    )
    html = staff_client.get(f"/admin/retraining/driftreport/{report.pk}/change/").content.decode()
    assert "<dt>psi</dt><dd>0.0123</dd>" in html and "0.0123456789" not in html
    assert "0.1667" in html and "0.5 s" in html and "DriftReport object" not in html


def test_the_experiment_form_defaults_to_the_newest_candidate_never_a_rejected_version(staff_client, tmp_path):
    candidate, rejected = registered_version(tmp_path), registered_version(tmp_path)
    ModelVersion.objects.filter(pk=rejected.pk).update(status=ModelStatus.REJECTED)
    html = staff_client.get("/admin/registry/experiment/start/").content.decode()
    assert re.findall(r'<option value="(\d+)" selected>', html) == [str(candidate.version)]


def test_an_experiments_canary_steps_read_as_a_list(staff_client, tmp_path):
    version = registered_version(tmp_path)
    experiment = Experiment.objects.create(
        version=version, mode="canary", steps=[10, 50, 100], started_by="ops", started_at=CLOCK
    )
    html = staff_client.get(f"/admin/registry/experiment/{experiment.pk}/change/").content.decode()
    assert "10, 50, 100" in html and "[10, 50, 100]" not in html


def test_without_a_candidate_the_experiment_form_preselects_no_version(staff_client, tmp_path):
    ModelVersion.objects.filter(pk=registered_version(tmp_path).pk).update(status=ModelStatus.REJECTED)
    html = staff_client.get("/admin/registry/experiment/start/").content.decode()
    assert '<option value="" selected>' in html and not re.findall(r'<option value="\d+" selected>', html)
