import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from registry.models import DeploymentChange
from registry.selectors import champion_version
from registry.services import model_version_promote
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(tmp_path):
    return [registered_version(tmp_path, ndcg=0.1 + n / 100) for n in range(3)]


def test_the_model_list_is_newest_first_and_needs_the_admin_scope(versions, admin_client_api, serve_client):
    assert serve_client.get("/api/v1/models").status_code == 403
    response = admin_client_api.get("/api/v1/models")
    assert response.status_code == 200
    assert [v["label"] for v in response.json()] == ["v3", "v2", "v1"]
    assert response.json()[0]["metrics"]["ndcg@10"] == pytest.approx(0.12)


def test_a_version_detail_includes_the_manifest(versions, admin_client_api):
    body = admin_client_api.get("/api/v1/models/2").json()
    assert body["version"] == 2 and body["manifest"] == {"marker": "m1"}
    assert admin_client_api.get("/api/v1/models/99").status_code == 404


def test_promote_and_rollback_through_the_api_are_audited(versions, admin_client_api):
    assert admin_client_api.post("/api/v1/models/1/promote", {"reason": "first"}, format="json").status_code == 200
    response = admin_client_api.post(
        "/api/v1/models/3/promote", {"reason": "better", "expected_current": 1}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["from_version"] == 1 and response.json()["to_version"] == 3
    response = admin_client_api.post("/api/v1/models/rollback", {"reason": "CTR fell"}, format="json")
    assert response.status_code == 200 and response.json()["to_version"] == 1
    assert champion_version().version == 1
    assert DeploymentChange.objects.first().actor.startswith("api-key:")


def test_a_stale_expected_current_gets_a_409(versions, admin_client_api):
    model_version_promote(version=1, actor="ops")
    response = admin_client_api.post("/api/v1/models/2/promote", {"expected_current": 3}, format="json")
    assert response.status_code == 409
    assert response.json()["current_version"] == 1


@pytest.mark.parametrize("body", [{"expected_current": "one"}, {"colour": "red"}, {"reason": 5}])
def test_bad_promote_bodies_get_a_400(versions, admin_client_api, body):
    assert admin_client_api.post("/api/v1/models/1/promote", body, format="json").status_code == 400
    assert champion_version() is None


def test_compare_returns_both_versions_on_the_same_metrics(versions, admin_client_api):
    body = admin_client_api.get("/api/v1/models/compare?a=1&b=3").json()
    ndcg = next(row for row in body["metrics"] if row["metric"] == "ndcg@10")
    assert (ndcg["a"], ndcg["b"], ndcg["better"]) == (pytest.approx(0.10), pytest.approx(0.12), "b")
    assert admin_client_api.get("/api/v1/models/compare?a=1").status_code == 400
    assert admin_client_api.get("/api/v1/models/compare?a=1&b=x").status_code == 400
    assert admin_client_api.get("/api/v1/models/compare?a=1&b=42").status_code == 404


def test_promote_and_rollback_commands(versions, capsys):
    call_command("promote", "1")
    call_command("promote", "2", "--reason", "better")
    call_command("rollback")
    assert champion_version().version == 1
    with pytest.raises(CommandError):
        call_command("promote", "1")


def test_export_model_comparison_writes_the_markdown_table(versions, tmp_path):
    model_version_promote(version=2, actor="ops")
    output = tmp_path / "MODEL_COMPARISON.md"
    call_command("export_model_comparison", "--output", str(output))
    text = output.read_text()
    assert (
        "| Version | Date | RMSE | RMSE bias baseline | RMSE global mean | MAE | R² | Recall@10 | MAP@10 "
        "| NDCG@10 | Candidate recall@100 | Status |"
    ) in text
    assert "| **v2** |" in text


def test_the_admin_lists_versions_with_metrics_and_promotes_after_confirmation(versions, staff_client):
    listing = staff_client.get("/admin/registry/modelversion/")
    assert listing.status_code == 200 and b"0.1200" in listing.content
    assert b"Promote" in staff_client.get(f"/admin/registry/modelversion/{versions[0].pk}/change/").content
    confirmation = staff_client.get(f"/admin/registry/modelversion/{versions[0].pk}/promote/")
    assert confirmation.status_code == 200 and b"csrfmiddlewaretoken" in confirmation.content
    assert champion_version() is None
    staff_client.post(
        f"/admin/registry/modelversion/{versions[0].pk}/promote/", {"reason": "go", "expected_current": ""}
    )
    assert champion_version().version == 1
    assert DeploymentChange.objects.get().actor == "admin:ops"


def test_the_admin_rolls_back_to_an_earlier_version(versions, staff_client):
    model_version_promote(version=1, actor="ops")
    model_version_promote(version=3, actor="ops")
    page = staff_client.get(f"/admin/registry/modelversion/{versions[0].pk}/change/").content
    assert b"Roll back to this version" in page
    staff_client.post(
        f"/admin/registry/modelversion/{versions[0].pk}/rollback/", {"reason": "bad", "expected_current": "3"}
    )
    assert champion_version().version == 1


def test_the_admin_pointer_views_refuse_non_staff(versions, client):
    client.force_login(User.objects.create_user("guest", password="pw"))
    response = client.post(f"/admin/registry/modelversion/{versions[0].pk}/promote/", {"reason": "x"})
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert champion_version() is None


def test_the_admin_pointer_views_need_csrf(versions):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("ops2", "o@example.com", "pw"))
    response = client.post(f"/admin/registry/modelversion/{versions[0].pk}/promote/", {"reason": "x"})
    assert response.status_code == 403
    assert champion_version() is None
