"""Every admin view that changes what is served or what runs needs an explicit permission: staff status alone gets a
403 and changes nothing, and the button is not shown. Superusers keep everything (tests/registry and
tests/retraining drive these views as a superuser)."""

import pytest
from django.contrib.auth.models import Permission, User

from registry.models import DeploymentChange, Experiment
from registry.selectors import champion_version
from registry.services import model_version_promote
from retraining.models import TrainingRun
from retraining.services.policy import policy_active
from retraining.services.rollout import challenger_deploy
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(tmp_path):
    """v1, v2 (the champion) and v3."""
    versions = [registered_version(tmp_path) for _ in range(3)]
    model_version_promote(version=2, actor="test")
    return versions


@pytest.fixture
def experiment(versions):
    return challenger_deploy(version=3, mode="ab", actor="test", reason="trial", traffic_percent=30)


@pytest.fixture
def operator(client):
    """A staff user with no permission yet, logged in."""
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    client.force_login(user)
    return user


def grant(user, *permissions: str) -> None:
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


@pytest.mark.parametrize(
    "action, version, permission",
    [("promote", 3, "registry.promote_modelversion"), ("rollback", 1, "registry.rollback_modelversion")],
)
def test_promote_and_rollback_in_the_admin_need_their_own_permission(
    client, operator, versions, action, version, permission
):
    grant(operator, "registry.view_modelversion", "registry.change_modelversion")
    url = f"/admin/registry/modelversion/{versions[version - 1].pk}/{action}/"
    page = f"/admin/registry/modelversion/{versions[version - 1].pk}/change/"
    body = {"reason": "by hand", "expected_current": "2"}
    assert url not in client.get(page).content.decode()
    assert client.get(url).status_code == 403
    assert client.post(url, body).status_code == 403
    assert champion_version().version == 2 and DeploymentChange.objects.count() == 1
    grant(operator, permission)
    assert url in client.get(page).content.decode()
    assert client.post(url, body).status_code == 302
    assert champion_version().version == version


def test_starting_an_experiment_in_the_admin_needs_the_start_permission(client, operator, versions):
    grant(operator, "registry.view_experiment")
    start = "/admin/registry/experiment/start/"
    body = {"version": "3", "mode": "ab", "traffic_percent": "30", "reason": "trial"}
    assert start not in client.get("/admin/registry/experiment/").content.decode()
    assert client.get(start).status_code == 403
    assert client.post(start, body).status_code == 403
    assert not Experiment.objects.exists()
    grant(operator, "registry.start_experiment")
    assert start in client.get("/admin/registry/experiment/").content.decode()
    assert client.post(start, body).status_code == 302
    assert Experiment.objects.get().started_by == "admin:operator"


@pytest.mark.parametrize("reject", ["", "1"])
def test_stopping_an_experiment_in_the_admin_needs_the_stop_permission(client, operator, experiment, reject):
    grant(operator, "registry.view_experiment", "registry.start_experiment", "registry.promote_modelversion")
    stop, page = (
        f"/admin/registry/experiment/{experiment.pk}/stop/",
        f"/admin/registry/experiment/{experiment.pk}/change/",
    )
    assert "Stop and reject" not in client.get(page).content.decode()
    assert client.post(stop, {"reason": "enough", "reject": reject}).status_code == 403
    experiment.refresh_from_db()
    experiment.version.refresh_from_db()
    assert experiment.status == "running" and experiment.version.status != "rejected"
    grant(operator, "registry.stop_experiment")
    assert "Stop and reject" in client.get(page).content.decode()
    assert client.post(stop, {"reason": "enough", "reject": reject}).status_code == 302
    experiment.refresh_from_db()
    assert experiment.status == "stopped"


def test_promoting_an_experiments_challenger_in_the_admin_needs_the_promote_permission(client, operator, experiment):
    grant(operator, "registry.view_experiment", "registry.start_experiment", "registry.stop_experiment")
    promote, page = (
        f"/admin/registry/experiment/{experiment.pk}/promote/",
        f"/admin/registry/experiment/{experiment.pk}/change/",
    )
    assert promote not in client.get(page).content.decode()
    assert client.post(promote, {"reason": "looks good"}).status_code == 403
    experiment.refresh_from_db()
    assert experiment.status == "running" and champion_version().version == 2
    grant(operator, "registry.promote_modelversion")
    assert promote in client.get(page).content.decode()
    assert client.post(promote, {"reason": "looks good"}).status_code == 302
    assert champion_version().version == 3


def test_the_retrain_button_needs_the_start_trainingrun_permission(client, operator):
    grant(operator, "retraining.view_trainingrun")
    retrain = "/admin/retraining/trainingrun/retrain/"
    assert "Retrain now" not in client.get("/admin/retraining/trainingrun/").content.decode()
    assert client.post(retrain).status_code == 403
    assert not TrainingRun.objects.exists()
    grant(operator, "retraining.start_trainingrun")
    assert "Retrain now" in client.get("/admin/retraining/trainingrun/").content.decode()
    assert client.post(retrain).status_code == 302
    assert TrainingRun.objects.get().requested_by == "admin:operator"


def test_editing_the_retrain_policy_needs_the_change_permission(client, operator):
    grant(operator, "retraining.view_retrainpolicy")
    policy = policy_active()
    assert policy.cooldown_minutes != 1
    page = f"/admin/retraining/retrainpolicy/{policy.pk}/change/"
    assert client.get(page).status_code == 200
    assert client.post(page, {"name": policy.name, "cooldown_minutes": "1"}).status_code == 403
    assert policy_active().cooldown_minutes == policy.cooldown_minutes
    grant(operator, "retraining.change_retrainpolicy")
    form = client.get(page).context["adminform"].form
    data = {name: form[name].value() for name in form.fields} | {"drift_key_features": "[]", "cooldown_minutes": "1"}
    assert client.post(page, {k: v for k, v in data.items() if v is not False and v is not None}).status_code == 302
    assert policy_active().cooldown_minutes == 1


def test_a_staff_user_without_permissions_cannot_reach_a_versions_online_metrics(client, operator, versions):
    url = "/admin/registry/experiment/online-metrics/2/"
    assert client.get(url).status_code == 403
    grant(operator, "registry.view_modelversion")
    assert client.get(url).status_code == 200
