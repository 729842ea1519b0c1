"""The model version's admin page reads cleanly: why it was rejected, the gate as sentences and a table, numbers
rounded, the run a link, nothing to save."""

from html import escape

import pytest

from registry.models import DeploymentChange, ModelVersion
from registry.services import model_version_reject
from retraining.models import RunStatus, TrainingRun
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db

FAILURE = "NDCG@10 0.1000 < champion 0.2000 × (1 + 0.01) = 0.2020"
GATE = {
    "passed": False,
    "failures": [FAILURE],
    "reasons": ["NDCG@10 0.1000 beats most-popular's 0.0700", FAILURE],
    "numbers": {
        "candidate": {"ndcg@10": 0.1000000123, "rmse": 0.9},
        "champion": {"ndcg@10": 0.2, "rmse": 0.95},
        "popularity": {"ndcg@10": 0.07},
        "required_ndcg@10": 0.20200000000000001,
        "ndcg_difference": {"mean": -0.1, "ci95_low": -0.15, "ci95_high": -0.05, "users": 40},
    },
    "champion_version": 1,
    "comparison_users": 40,
    "refit_on_full_data": False,
}


@pytest.fixture
def rejected(tmp_path):
    version = registered_version(tmp_path, ndcg=0.1)
    ModelVersion.objects.filter(pk=version.pk).update(training_duration_s=4.814395558000001, artifact_size=2_345_678)
    run = TrainingRun.objects.create(
        trigger="manual", status=RunStatus.REJECTED, in_flight=None, gate=GATE, model_version=version
    )
    ModelVersion.objects.filter(pk=version.pk).update(training_run_id=run.pk)
    model_version_reject(version=version.version, actor="gate", reason=f"run {run.pk}: {FAILURE}")
    return version, run


def page(client, version) -> str:
    response = client.get(f"/admin/registry/modelversion/{version.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_rejected_versions_page_says_why_before_its_fields(staff_client, rejected):
    html = page(staff_client, rejected[0])
    assert "v1 was rejected" in html
    assert html.index(escape(FAILURE)) < html.index("Training window start")


def test_the_gate_decision_reads_as_sentences_and_a_table_without_escapes(staff_client, rejected):
    html = page(staff_client, rejected[0])
    assert "Refused: the candidate may not replace the champion." in html
    assert "<th>candidate</th><th>champion</th><th>popularity</th>" in html
    assert "×" in html and "\\u" not in html and "{&quot;" not in html and '{"' not in html
    assert "0.2020" in html and "0.20200000000000001" not in html and "0.1000000123" not in html


def test_duration_and_size_are_rounded_and_the_training_run_is_a_link(staff_client, rejected):
    version, run = rejected
    html = page(staff_client, version)
    assert "4.8 s" in html and "4.814395558" not in html
    assert "2.3 MB" in html and "2345678" not in html
    assert f'href="/admin/retraining/trainingrun/{run.pk}/change/"' in html.replace("'", '"')


def test_a_version_page_has_no_save_button(staff_client, rejected):
    html = page(staff_client, rejected[0])
    assert 'name="_save"' not in html and 'name="_continue"' not in html


def test_dataset_stats_and_the_manifest_are_definition_lists(staff_client, rejected):
    html = page(staff_client, rejected[0])
    assert "<dt>events</dt><dd>300</dd>" in html and "<dt>marker</dt><dd>m0</dd>" in html


def test_view_site_leads_to_the_api_docs(staff_client, rejected):
    html = page(staff_client, rejected[0])
    assert '<a href="/api/docs/">View site</a>' in html
    assert staff_client.get("/api/docs/").status_code == 200


def test_an_audit_entrys_details_are_a_definition_list(staff_client, rejected):
    change = DeploymentChange.objects.create(
        alias="champion", action="promote", actor="ops", details={"ndcg@10": 0.123456}
    )
    html = staff_client.get(f"/admin/registry/deploymentchange/{change.pk}/change/").content.decode()
    assert "<dt>ndcg@10</dt><dd>0.1235</dd>" in html


def test_the_promote_confirmation_shows_ndcg_rounded(staff_client, tmp_path):
    version = registered_version(tmp_path, ndcg=0.123456789)
    html = staff_client.get(f"/admin/registry/modelversion/{version.pk}/promote/").content.decode()
    assert "NDCG@10 0.1235" in html and "0.123456789" not in html


def test_the_metrics_table_puts_the_rating_baselines_beside_rmse(staff_client, tmp_path):
    version = registered_version(tmp_path)
    ModelVersion.objects.filter(pk=version.pk).update(
        baseline_metrics={
            "popularity": {"ndcg@10": 0.07},
            "global_mean": {"rmse": 1.0695, "mae": 0.837, "r2": -0.003},
            "bias": {"rmse": 0.8943, "mae": 0.6877, "r2": 0.2984, "l2": 3.0},
        }
    )
    html = page(staff_client, version)
    assert "<th>global_mean</th>" in html and "<th>bias</th>" in html
    rmse_row = html[html.index("<td>rmse</td>") :].split("</tr>")[0]
    assert "0.9000" in rmse_row and "1.0695" in rmse_row and "0.8943" in rmse_row


def test_the_gate_decision_shows_the_segment_table_fewest_events_first_with_each_interval_or_skip(
    staff_client, rejected
):
    version, run = rejected
    metrics = {"ndcg@10": 0.12345678, "recall@10": 0.2, "hit_rate@10": 0.5}
    segments = {  # in a jsonb column's key order, not the segments' order
        "new": {
            "training_events": "0–9",
            "users": 3,
            "candidate": metrics,
            "champion": metrics,
            "ndcg_difference": {"skipped": "fewer than 20 users"},
        },
        "heavy": {
            "training_events": "50+",
            "users": 30,
            "candidate": metrics,
            "champion": metrics,
            "ndcg_difference": {"mean": -0.02, "ci95_low": -0.031, "ci95_high": -0.0123},
        },
        "light": {"training_events": "10–49", "users": 0},
    }
    run.gate = {**GATE, "numbers": {**GATE["numbers"], "segments": segments}}
    run.save(update_fields=["gate"])
    html = page(staff_client, version)
    assert "<th>candidate NDCG / Recall / HitRate @10</th>" in html and "<th>ΔNDCG@10 95% CI</th>" in html
    assert html.index("<td>0–9</td>") < html.index("<td>10–49</td>") < html.index("<td>50+</td>")
    assert "0.1235 / 0.2000 / 0.5000" in html and "0.12345678" not in html
    assert "not checked: fewer than 20 users" in html and "[-0.0310, -0.0123]" in html
