"""Comparing two versions on one holdout: POST /api/v1/comparisons, the task, GET /api/v1/comparisons/<id>."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from kombu.exceptions import OperationalError

from registry.models import ModelVersion
from registry.services import model_version_promote
from retraining.ml.params import TrainingParams
from retraining.ml.split import holdout_after, split_compute
from retraining.models import ComparisonStatus, VersionComparison
from retraining.services import comparison as comparison_service
from retraining.services.comparison import version_comparison_compute, version_comparison_request
from retraining.services.dataset import event_log_load
from retraining.services.pipeline import training_run_process
from retraining.services.runs import training_run_request
from retraining.tasks import version_comparison_compute_task
from tests.registry.factories import registered_version
from tests.retraining.factories import dataset_store, learnable_dataset

pytestmark = pytest.mark.django_db
CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)
EARLIER = datetime(2025, 4, 21, tzinfo=UTC)  # the history runs to about May 1: days of it are newer


def run_now(*, until):
    run = training_run_request(trigger="manual", data_until=until)
    training_run_process(run_id=run.pk)
    run.refresh_from_db()
    return run


@pytest.fixture
def two_trained_versions():
    """v1 trained up to EARLIER and v2 up to CUTOFF by the pipeline, v2 gated against v1; their runs."""
    dataset_store(learnable_dataset(users=120, items=80, per_user=24))
    return run_now(until=EARLIER), run_now(until=CUTOFF)


def documented_events_and_users() -> tuple[int, int]:
    """The documented set, counted from the events: v2's holdout (the last 20% of each user's events up to
    CUTOFF) after v1's cut-off EARLIER, and the users among them with a positive held-out event on an active item
    they had not interacted with before."""
    log = event_log_load(until=CUTOFF)
    split = holdout_after(split_compute(log, TrainingParams()), log, moment=EARLIER)
    users = set()
    for user in np.unique(log.user[split.holdout]).tolist():
        mine = log.user == user
        seen = set(log.item[mine & ~split.holdout].tolist())
        liked = log.item[mine & split.holdout & log.positive() & log.item_active[log.item]]
        if set(liked.tolist()) - seen:
            users.add(user)
    return int(split.holdout.sum()), len(users)


def test_every_row_of_a_comparison_is_scored_on_the_same_documented_held_out_events(two_trained_versions):
    first_run, second_run = two_trained_versions
    v1, v2 = first_run.model_version, second_run.model_version
    assert v1.dataset_stats["holdout_events"] != v2.dataset_stats["holdout_events"]  # their recorded holdouts differ

    comparison, created = version_comparison_request(versions=[v1.version, v2.version], requested_by="test")
    assert created and comparison.status == ComparisonStatus.QUEUED
    version_comparison_compute(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == ComparisonStatus.DONE, comparison.error

    events, users = documented_events_and_users()
    holdout = comparison.holdout
    assert (holdout["events"], holdout["users"]) == (events, users)
    assert users > 0 and events not in (v1.dataset_stats["holdout_events"], v2.dataset_stats["holdout_events"])
    assert (holdout["after"], holdout["until"], holdout["holdout_of"]) == (
        EARLIER.isoformat(),
        CUTOFF.isoformat(),
        v2.version,
    )
    assert f"the {events:,} held-out events after 2025-04-21 00:00" in holdout["description"]
    assert f"{users:,} users with a held-out positive" in holdout["description"]

    rows = {row["name"]: row for row in comparison.rows}
    assert list(rows) == ["v1", "v2", "most-popular", "EASE", "global mean", "user + item biases"]
    assert {rows[name]["users"] for name in ("v1", "v2", "most-popular", "EASE")} == {users}
    assert rows["v1"]["version"] == v1.version and rows["v2"]["kind"] == "version"
    assert rows["user + item biases"]["metrics"]["rmse"] > 0 and rows["EASE"]["metrics"]["ndcg@10"] is not None

    # The gate compared v2 with v1 on exactly these events: the comparison reproduces its numbers.
    gate = second_run.gate["numbers"]
    assert second_run.gate["comparison_events"] == events and second_run.gate["comparison_users"] == users
    assert rows["v2"]["metrics"]["ndcg@10"] == pytest.approx(gate["candidate"]["ndcg@10"])
    assert rows["v1"]["metrics"]["ndcg@10"] == pytest.approx(gate["champion"]["ndcg@10"])
    assert rows["v1"]["metrics"]["rmse"] == pytest.approx(gate["champion"]["rmse"])
    assert rows["most-popular"]["metrics"]["ndcg@10"] == pytest.approx(gate["popularity"]["ndcg@10"])
    assert rows["user + item biases"]["metrics"]["rmse"] == pytest.approx(gate["rating_bias"]["rmse"])
    assert set(comparison.segments) == {"new", "light", "heavy"}
    assert sum(row["users"] for row in comparison.segments.values()) == users

    # Asked the other way round: the same holdout and numbers, the rows in the order asked.
    swapped, _ = version_comparison_request(versions=[v2.version, v1.version], requested_by="test")
    version_comparison_compute(comparison_id=swapped.pk)
    swapped.refresh_from_db()
    assert swapped.holdout == holdout
    assert [row["name"] for row in swapped.rows][:2] == ["v2", "v1"]
    assert {row["name"]: row["metrics"] for row in swapped.rows} == {name: row["metrics"] for name, row in rows.items()}


@pytest.mark.parametrize("later", [CUTOFF, CUTOFF + timedelta(days=30)])
def test_versions_with_no_event_between_their_cut_offs_are_compared_on_their_shared_whole_holdout(
    two_trained_versions, later
):
    _, second_run = two_trained_versions
    third = run_now(until=later).model_version  # the history ends in May: no event after CUTOFF
    comparison, _ = version_comparison_request(
        versions=[second_run.model_version.version, third.version], requested_by="t"
    )
    version_comparison_compute(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == ComparisonStatus.DONE, comparison.error
    assert comparison.holdout["after"] is None and comparison.holdout["events"] == third.dataset_stats["holdout_events"]
    assert comparison.holdout["basis"].startswith("no event arrived between v2's cut-off and v3's")


# --- The task: claimed once, written once -------------------------------------------------------------------


@pytest.fixture
def versions(tmp_path):
    return [registered_version(tmp_path, ndcg=0.1 + n / 100) for n in range(2)]


HOLDOUT = {
    "events": 7,
    "users": 3,
    "after": "2025-04-21T00:00:00+00:00",
    "until": "2025-06-01T00:00:00+00:00",
    "holdout_of": 2,
    "basis": "v2's holdout, only the events after v1's cut-off",
    "description": "the 7 held-out events after 2025-04-21 00:00",
}


@pytest.fixture
def counted_scores(monkeypatch):
    """version_comparison_scores replaced by a counter (the replay itself is tested above)."""
    calls = []

    def scores(*, a, b):
        calls.append((a.version, b.version))
        row = {"name": a.label, "kind": "version", "version": a.version, "users": 3, "metrics": {"ndcg@10": 0.4321}}
        return {"holdout": HOLDOUT, "rows": [row], "segments": {}}

    monkeypatch.setattr(comparison_service, "version_comparison_scores", scores)
    return calls


def test_running_the_task_twice_computes_once_and_leaves_the_result(versions, counted_scores):
    comparison, _ = version_comparison_request(versions=[1, 2], requested_by="test")
    version_comparison_compute_task(comparison.pk)
    done = VersionComparison.objects.get(pk=comparison.pk)
    version_comparison_compute_task(comparison.pk)
    again = VersionComparison.objects.get(pk=comparison.pk)
    assert counted_scores == [(1, 2)]
    assert again.status == ComparisonStatus.DONE and again.finished_at == done.finished_at
    assert again.holdout == HOLDOUT


def test_a_comparison_running_elsewhere_is_left_alone_until_its_task_must_have_died(versions, counted_scores, settings):
    comparison, _ = version_comparison_request(versions=[1, 2], requested_by="test")
    started = timezone.now()
    VersionComparison.objects.filter(pk=comparison.pk).update(status=ComparisonStatus.RUNNING, started_at=started)
    version_comparison_compute(comparison_id=comparison.pk)
    assert counted_scores == [] and VersionComparison.objects.get(pk=comparison.pk).status == ComparisonStatus.RUNNING

    long_ago = started - timedelta(seconds=settings.TRAINING_TIME_LIMIT + 1)
    VersionComparison.objects.filter(pk=comparison.pk).update(started_at=long_ago)
    version_comparison_compute(comparison_id=comparison.pk)  # the redelivered message of a dead worker
    assert counted_scores == [(1, 2)] and VersionComparison.objects.get(pk=comparison.pk).status == "done"


def test_a_version_whose_artifact_vanished_after_the_request_fails_the_comparison_with_the_reason(versions):
    comparison, _ = version_comparison_request(versions=[1, 2], requested_by="test")
    Path(versions[1].artifact_path).unlink()
    version_comparison_compute(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == ComparisonStatus.FAILED and comparison.rows == []
    assert comparison.error.startswith("v2 cannot be compared:") and "missing" in comparison.error


def test_a_version_without_training_parameters_fails_the_comparison_with_the_reason(versions):
    comparison, _ = version_comparison_request(versions=[1, 2], requested_by="test")
    version_comparison_compute(comparison_id=comparison.pk)
    comparison.refresh_from_db()
    assert comparison.status == ComparisonStatus.FAILED
    assert "its manifest records no training parameters" in comparison.error


# --- The API ------------------------------------------------------------------------------------------------


def test_posting_two_versions_queues_a_comparison_and_asking_again_returns_the_same_one(versions, admin_client_api):
    response = admin_client_api.post("/api/v1/comparisons", {"versions": [1, 2]}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["versions"] == [1, 2] and body["status"] == "queued" and body["holdout"] is None and body["rows"] == []
    again = admin_client_api.post("/api/v1/comparisons", {"versions": [1, 2]}, format="json")
    assert again.status_code == 202 and again.json()["id"] == body["id"]
    assert VersionComparison.objects.count() == 1
    detail = admin_client_api.get(f"/api/v1/comparisons/{body['id']}")
    assert detail.status_code == 200 and detail.json()["id"] == body["id"]


def test_a_finished_comparison_reads_with_its_rows_and_events(versions, admin_client_api, counted_scores):
    comparison, _ = version_comparison_request(versions=[2, 1], requested_by="test")
    version_comparison_compute(comparison_id=comparison.pk)
    body = admin_client_api.get(f"/api/v1/comparisons/{comparison.pk}").json()
    assert body["status"] == "done" and body["versions"] == [2, 1]
    assert body["holdout"]["events"] == 7 and body["holdout"]["after"] == HOLDOUT["after"]
    assert [(row["name"], row["metrics"]["ndcg@10"]) for row in body["rows"]] == [("v2", 0.4321)]


@pytest.mark.parametrize(
    "body, status",
    [
        ({"versions": [1, 1]}, 400),
        ({"versions": [1, 99]}, 404),
        ({"versions": [1]}, 400),
        ({"versions": [1, 2, 2]}, 400),
        ({"versions": ["1", 2]}, 400),
        ({"versions": [0, 2]}, 400),
        ({"versions": "1,2"}, 400),
        ({}, 400),
        ({"versions": [1, 2], "colour": "red"}, 400),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message_and_queue_nothing(versions, admin_client_api, body, status):
    response = admin_client_api.post("/api/v1/comparisons", body, format="json")
    assert response.status_code == status and response.json()["message"]
    assert not VersionComparison.objects.exists()


def test_a_version_without_its_artifact_gets_a_422_and_nothing_is_queued(versions, admin_client_api):
    Path(versions[0].artifact_path).unlink()
    response = admin_client_api.post("/api/v1/comparisons", {"versions": [1, 2]}, format="json")
    assert response.status_code == 422
    assert response.json()["message"].startswith("v1 cannot be compared: its artifact")
    ModelVersion.objects.filter(version=2).update(artifact_sha256="")
    assert admin_client_api.post("/api/v1/comparisons", {"versions": [2, 1]}, format="json").status_code == 422
    assert not VersionComparison.objects.exists()


def test_an_unknown_comparison_is_a_404(admin_client_api):
    assert admin_client_api.get("/api/v1/comparisons/99").status_code == 404


def test_the_recorded_numbers_endpoint_says_they_are_not_comparable(versions, admin_client_api):
    body = admin_client_api.get("/api/v1/models/compare?a=1&b=2").json()
    assert body["comparable"] is False and "own holdout" in body["note"] and "/api/v1/comparisons" in body["note"]
    assert set(body["holdouts"]) == {"a", "b"}


# --- The admin ----------------------------------------------------------------------------------------------


def test_the_admin_queues_a_comparison_and_shows_its_rows_once_done(versions, staff_client, counted_scores):
    model_version_promote(version=1, actor="test")
    form = staff_client.get("/admin/retraining/versioncomparison/compare/")
    assert form.status_code == 200 and b"Compare two versions on one holdout" in form.content
    response = staff_client.post("/admin/retraining/versioncomparison/compare/", {"a": "1", "b": "2"})
    comparison = VersionComparison.objects.get()
    assert response.status_code == 302 and response.url.endswith(f"/versioncomparison/{comparison.pk}/change/")
    assert b"comparison-pending" in staff_client.get(response.url).content
    version_comparison_compute(comparison_id=comparison.pk)
    page = staff_client.get(response.url).content.decode()
    assert "The 7 held-out events after 2025-04-21 00:00" in page and "0.4321" in page
    assert "comparison-pending" not in page


def test_the_admin_refuses_the_same_version_twice_and_queues_nothing(versions, staff_client):
    response = staff_client.post("/admin/retraining/versioncomparison/compare/", {"a": "1", "b": "1"}, follow=True)
    assert "Compare two different versions" in response.content.decode()
    assert not VersionComparison.objects.exists()


def test_the_version_list_says_its_metrics_are_each_versions_own_holdout(versions, staff_client):
    page = staff_client.get("/admin/registry/modelversion/").content.decode()
    assert "own-holdout-note" in page and "Compare two versions on one holdout" in page


def test_comparing_in_the_admin_needs_its_own_permission(versions, client):
    operator = User.objects.create_user("operator", password="pw", is_staff=True)
    client.force_login(operator)
    assert client.get("/admin/retraining/versioncomparison/compare/").status_code == 403
    assert client.post("/admin/retraining/versioncomparison/compare/", {"a": "1", "b": "2"}).status_code == 403
    assert not VersionComparison.objects.exists()
    operator.user_permissions.add(Permission.objects.get(codename="add_versioncomparison"))
    assert client.post("/admin/retraining/versioncomparison/compare/", {"a": "1", "b": "2"}).status_code == 302
    assert VersionComparison.objects.count() == 1


@pytest.mark.django_db(transaction=True)  # the request's own commit sends the task, as in production
def test_a_comparison_the_broker_cannot_take_is_failed_and_answered_with_a_503(versions, admin_client_api, monkeypatch):
    def broker_down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(comparison_service.current_app, "send_task", broker_down)
    response = admin_client_api.post("/api/v1/comparisons", {"versions": [1, 2]}, format="json")
    assert response.status_code == 503 and response.json()["error"] == "broker_unavailable"
    comparison = VersionComparison.objects.get()
    assert comparison.status == ComparisonStatus.FAILED and "the broker is unavailable" in comparison.error
    sent = []
    monkeypatch.setattr(comparison_service.current_app, "send_task", lambda *args, **kwargs: sent.append(kwargs))
    again = admin_client_api.post("/api/v1/comparisons", {"versions": [1, 2]}, format="json")
    assert again.status_code == 202 and again.json()["id"] != comparison.pk  # the failed one is not in progress
    assert sent == [{"args": [again.json()["id"]], "queue": "training"}]
