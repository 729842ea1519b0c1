import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from retraining.models import TrainingRun
from retraining.services.policy import policy_active
from retraining.services.triggers import triggers_check

pytestmark = pytest.mark.django_db


def test_retrain_answers_202_with_the_run_then_409_with_the_same_run(admin_client_api):
    first = admin_client_api.post("/api/v1/retrain")
    assert first.status_code == 202 and first.json()["status"] == "queued"
    second = admin_client_api.post("/api/v1/retrain")
    assert second.status_code == 409 and second.json()["run_id"] == first.json()["run_id"]
    run = TrainingRun.objects.get()
    assert run.trigger == "manual" and run.requested_by.startswith("api-key:")


def test_retrain_needs_the_admin_scope(serve_client):
    assert serve_client.post("/api/v1/retrain").status_code == 403
    assert not TrainingRun.objects.exists()


def test_training_runs_are_listed_newest_first_with_details(admin_client_api):
    run_id = admin_client_api.post("/api/v1/retrain").json()["run_id"]
    listing = admin_client_api.get("/api/v1/training-runs").json()
    assert [r["id"] for r in listing] == [run_id]
    detail = admin_client_api.get(f"/api/v1/training-runs/{run_id}").json()
    assert detail["trigger"] == "manual" and detail["log"] == [] and detail["model_version"] is None
    assert admin_client_api.get("/api/v1/training-runs/999999").status_code == 404


def test_the_latest_trigger_evaluation_is_served(admin_client_api):
    assert admin_client_api.get("/api/v1/trigger-evaluations/latest").status_code == 404
    evaluation = triggers_check()
    body = admin_client_api.get("/api/v1/trigger-evaluations/latest").json()
    assert body["id"] == evaluation.pk and set(body["results"]) == {"time", "volume", "performance", "drift"}


def test_a_drift_check_without_a_champion_is_a_clear_404(admin_client_api):
    response = admin_client_api.post("/api/v1/drift-reports")
    assert response.status_code == 404 and "champion" in response.json()["message"]
    assert admin_client_api.get("/api/v1/drift-reports/latest").status_code == 404


def test_the_retrain_command_goes_through_the_same_service(capsys):
    call_command("retrain")
    assert "queued" in capsys.readouterr().out
    with pytest.raises(CommandError, match="already queued"):
        call_command("retrain")


@pytest.fixture
def staff():
    return User.objects.create_superuser("ops", "ops@example.com", "pw")


def test_the_admin_retrain_button_is_a_csrf_protected_post(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    page = client.get("/admin/retraining/trainingrun/")
    assert b"Retrain now" in page.content
    token = page.cookies["csrftoken"].value
    assert client.get("/admin/retraining/trainingrun/retrain/").status_code == 405
    assert client.post("/admin/retraining/trainingrun/retrain/").status_code == 403
    assert not TrainingRun.objects.exists()
    client.post("/admin/retraining/trainingrun/retrain/", {"csrfmiddlewaretoken": token})
    assert TrainingRun.objects.get().requested_by == "admin:ops"


def test_the_admin_shows_policy_evaluations_drift_reports_and_runs(staff, client):
    client.force_login(staff)
    triggers_check()
    for page in ["retrainpolicy", "triggerevaluation", "driftreport", "trainingrun"]:
        assert client.get(f"/admin/retraining/{page}/").status_code == 200, page
    assert b"volume: quiet" in client.get("/admin/retraining/triggerevaluation/").content


def test_the_admin_turns_the_refit_on_full_data_on_for_the_active_policy(staff, client):
    client.force_login(staff)
    policy = policy_active()
    page = f"/admin/retraining/retrainpolicy/{policy.pk}/change/"
    form = client.get(page).context["adminform"].form
    data = {name: form[name].value() for name in form.fields} | {"drift_key_features": "[]", "refit_on_full_data": "on"}
    assert client.post(page, {k: v for k, v in data.items() if v is not False and v is not None}).status_code == 302
    policy.refresh_from_db()
    assert policy.refit_on_full_data is True


def test_non_staff_cannot_press_retrain(client):
    client.force_login(User.objects.create_user("guest", password="pw"))
    response = client.post("/admin/retraining/trainingrun/retrain/")
    assert response.status_code == 302
    assert not TrainingRun.objects.exists()
