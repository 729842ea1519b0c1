from datetime import timedelta

import pytest

from recommendations.clock import system_now
from recommendations.models import Item
from registry.models import DeploymentChange, Experiment
from registry.services import model_version_promote
from retraining.services.policy import policy_active
from tests.recommendations.factories import experiment_traffic, outcomes_recorded
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db
CHALLENGER = "/api/v1/deployments/challenger"


@pytest.fixture
def versions(tmp_path):
    champion, candidate = registered_version(tmp_path), registered_version(tmp_path)
    model_version_promote(version=champion.version, actor="test")
    return champion, candidate


def test_deployments_show_the_champion_and_no_challenger_at_first(admin_client_api, versions):
    body = admin_client_api.get("/api/v1/deployments").json()
    assert body["champion"]["version"] == versions[0].version
    assert body["challenger"] == {"version": None, "mode": "none", "traffic_percent": 0, "experiment": None}


def test_starting_a_canary_takes_the_policys_steps_and_shows_in_deployments(admin_client_api, versions):
    response = admin_client_api.post(
        CHALLENGER, {"version": versions[1].version, "mode": "canary", "reason": "try"}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert response.json()["steps"] == [10, 50, 100] and response.json()["traffic_percent"] == 10
    challenger = admin_client_api.get("/api/v1/deployments").json()["challenger"]
    assert (challenger["version"], challenger["mode"], challenger["traffic_percent"]) == (
        versions[1].version,
        "canary",
        10,
    )
    assert DeploymentChange.objects.filter(action="challenger_start", actor__startswith="api-key:").exists()


def test_a_second_challenger_is_a_conflict_unless_it_replaces(admin_client_api, versions, tmp_path):
    third = registered_version(tmp_path)
    assert (
        admin_client_api.post(
            CHALLENGER, {"version": versions[1].version, "mode": "ab", "traffic_percent": 20}, format="json"
        ).status_code
        == 201
    )
    conflict = admin_client_api.post(CHALLENGER, {"version": third.version, "mode": "shadow"}, format="json")
    assert conflict.status_code == 409 and conflict.json()["experiment_id"]
    replaced = admin_client_api.post(
        CHALLENGER, {"version": third.version, "mode": "shadow", "replace": True}, format="json"
    )
    assert replaced.status_code == 201
    assert replaced.json()["traffic_percent"] == policy_active().shadow_traffic_percent == 25


@pytest.mark.parametrize(
    "body, status",
    [
        ({"version": 2, "mode": "blue-green"}, 400),
        ({"version": 2, "mode": "ab", "steps": [10, 100]}, 400),
        ({"version": 2, "mode": "canary", "steps": [50, 10]}, 400),
        ({"version": 2, "mode": "canary", "traffic_percent": 10}, 400),
        ({"version": 2, "mode": "ab", "traffic_percent": 150}, 400),
        ({"version": 2, "mode": "ab", "traffic_percent": 0}, 400),
        ({"version": "2", "mode": "ab"}, 400),
        ({"version": 2, "mode": "ab", "colour": "red"}, 400),
        ({"version": 1, "mode": "ab"}, 400),
        ({"version": 99, "mode": "ab"}, 404),
        ([1, 2], 400),
    ],
)
def test_a_bad_challenger_request_is_refused_and_changes_nothing(admin_client_api, versions, body, status):
    response = admin_client_api.post(CHALLENGER, body, format="json")
    assert response.status_code == status, response.json()
    assert not Experiment.objects.exists()


def test_stopping_returns_all_traffic_to_the_champion_and_can_reject(admin_client_api, versions):
    admin_client_api.post(CHALLENGER, {"version": versions[1].version, "mode": "ab"}, format="json")
    stopped = admin_client_api.delete(CHALLENGER, {"reason": "enough", "reject": True}, format="json")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    versions[1].refresh_from_db()
    assert versions[1].status == "rejected"
    assert admin_client_api.get("/api/v1/deployments").json()["challenger"]["version"] is None
    again = admin_client_api.delete(CHALLENGER, format="json")
    assert again.status_code == 400 and "No experiment" in again.json()["message"]


def test_the_report_compares_the_arms_of_the_running_experiment(admin_client_api, versions):
    assert admin_client_api.get(f"{CHALLENGER}/report").status_code == 404
    experiment = admin_client_api.post(CHALLENGER, {"version": versions[1].version, "mode": "ab"}, format="json").json()
    items = [Item.objects.create(external_id=f"i{n}") for n in range(10)]
    experiment_traffic(
        experiment=experiment["id"],
        items=items,
        users=40,
        start=system_now() - timedelta(hours=1),
        control_rate=0.5,
        treatment_rate=0.5,
        versions=(versions[0].version, versions[1].version),
    )
    outcomes_recorded()
    report = admin_client_api.get(f"{CHALLENGER}/report").json()
    assert report["arms"]["champion"]["impressions"] == report["arms"]["challenger"]["impressions"] == 60
    assert report["verdict"] == "insufficient_sample" and set(report["differences"]) == {"ctr", "hit_rate"}
    admin_client_api.delete(CHALLENGER, format="json")
    final = admin_client_api.get(f"{CHALLENGER}/report").json()
    assert final["status"] == "stopped" and final["arms"]["challenger"]["impressions"] == 60


def test_online_metrics_of_a_version_by_day(admin_client_api, versions):
    items = [Item.objects.create(external_id=f"i{n}") for n in range(10)]
    experiment_traffic(
        experiment=None,
        items=items,
        users=10,
        start=system_now() - timedelta(hours=2),
        control_rate=1.0,
        treatment_rate=0.0,
        versions=(versions[0].version, versions[1].version),
    )
    outcomes_recorded()
    body = admin_client_api.get(
        f"/api/v1/models/{versions[0].version}/online-metrics", {"bucket": "hour", "days": 1}
    ).json()
    assert sum(row["impressions"] for row in body["rows"]) == 15
    assert all(row["ctr"] == 1.0 and row["arm"] == "champion" for row in body["rows"])
    assert admin_client_api.get("/api/v1/models/99/online-metrics").status_code == 404
    assert (
        admin_client_api.get(f"/api/v1/models/{versions[0].version}/online-metrics", {"bucket": "week"}).status_code
        == 400
    )


def test_the_deployment_endpoints_need_the_admin_scope(serve_client, versions):
    assert serve_client.get("/api/v1/deployments").status_code == 403
    assert serve_client.post(CHALLENGER, {"version": 2, "mode": "ab"}, format="json").status_code == 403


def test_the_admin_starts_an_experiment_and_shows_its_arms_side_by_side(staff_client, versions):
    form = staff_client.get("/admin/registry/experiment/start/")
    assert form.status_code == 200 and b"csrfmiddlewaretoken" in form.content
    response = staff_client.post(
        "/admin/registry/experiment/start/",
        {"version": versions[1].version, "mode": "canary", "steps": "20, 100", "reason": "trial"},
    )
    experiment = Experiment.objects.get()
    assert response.status_code == 302 and (experiment.steps, experiment.started_by) == ([20, 100], "admin:ops")
    page = staff_client.get(f"/admin/registry/experiment/{experiment.pk}/change/").content.decode()
    assert "lists served" in page and "<th>champion</th><th>challenger</th>" in page and "Stop and reject" in page
    assert staff_client.get("/admin/registry/experiment/").status_code == 200


def test_a_bad_start_in_the_admin_is_an_error_message_not_an_experiment(staff_client, versions):
    response = staff_client.post(
        "/admin/registry/experiment/start/",
        {"version": versions[1].version, "mode": "canary", "steps": "50, 10"},
        follow=True,
    )
    assert b"Canary steps" in response.content and not Experiment.objects.exists()


def test_the_admin_stops_and_rejects_or_promotes_the_challenger(staff_client, versions, tmp_path):
    third = registered_version(tmp_path)
    experiment = admin_start(staff_client, versions[1])
    staff_client.post(f"/admin/registry/experiment/{experiment.pk}/stop/", {"reason": "enough", "reject": "1"})
    experiment.refresh_from_db()
    versions[1].refresh_from_db()
    assert experiment.status == "stopped" and versions[1].status == "rejected"
    second = admin_start(staff_client, third)
    staff_client.post(f"/admin/registry/experiment/{second.pk}/promote/", {"reason": "looks good"})
    second.refresh_from_db()
    assert second.status == "promoted"
    assert DeploymentChange.objects.filter(action="promote", actor="admin:ops", to_version=third).exists()


def admin_start(client, version) -> Experiment:
    client.post(
        "/admin/registry/experiment/start/", {"version": version.version, "mode": "ab", "traffic_percent": "30"}
    )
    return Experiment.objects.get(status="running")


def test_the_admin_shows_a_versions_online_metrics(staff_client, versions):
    items = [Item.objects.create(external_id=f"i{n}") for n in range(10)]
    experiment_traffic(
        experiment=None,
        items=items,
        users=6,
        start=system_now() - timedelta(hours=2),
        control_rate=1.0,
        treatment_rate=0.0,
        versions=(versions[0].version, versions[1].version),
    )
    outcomes_recorded()
    assert b"Online metrics" in staff_client.get(f"/admin/registry/modelversion/{versions[0].pk}/change/").content
    page = staff_client.get(f"/admin/registry/experiment/online-metrics/{versions[0].version}/").content.decode()
    assert "<td>champion</td><td>9</td>" in page


def test_the_admin_experiment_actions_need_staff_and_post(client, versions, django_user_model):
    client.force_login(django_user_model.objects.create_user("guest", password="pw"))
    response = client.post("/admin/registry/experiment/start/", {"version": versions[1].version, "mode": "ab"})
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not Experiment.objects.exists()
