"""While the database is unreachable the API answers a JSON 503 `database_unavailable`, never a 500 or an
HTML page, and answers normally again once it is back.

The outage is simulated in-process: the default connection is closed and pointed at a local port that nothing
listens on, so each request's connect really fails (connection refused), as it does when PostgreSQL is down; and
an open connection is terminated by the server (pg_terminate_backend), as a restart or failover does."""

import socket

import pytest
from django.db import OperationalError, connection, connections
from django.middleware.common import CommonMiddleware
from rest_framework.test import APIClient

from recommendations.models import Interaction, Item

EVENT = {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2024-05-01T12:00:00Z"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def database_down(transactional_db):
    """A callable that takes the database away; it comes back when the test ends (or when the test calls the
    callable's `restore`)."""
    original = dict(connection.settings_dict)

    def restore():
        connection.close()
        connection.settings_dict.update(original)

    def take_down():
        connection.close()
        connection.settings_dict.update(HOST="127.0.0.1", PORT=closed_port())

    take_down.restore = restore
    yield take_down
    restore()


def assert_database_unavailable(response):
    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "database_unavailable"
    assert body["errors"] == [] and body["request_id"] == response["X-Request-ID"]


def test_an_event_posted_during_an_outage_gets_a_json_503_and_succeeds_once_the_database_is_back(
    ingest_client, database_down
):
    database_down()
    assert_database_unavailable(ingest_client.post("/api/v1/events", EVENT, format="json"))
    database_down.restore()
    assert not Interaction.objects.exists()
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 201


def test_an_api_key_that_cannot_be_checked_during_an_outage_gets_a_503_not_a_401(ingest_client, database_down, runtime):
    runtime.verified_keys.clear()
    database_down()
    assert_database_unavailable(ingest_client.post("/api/v1/events", EVENT, format="json"))


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("put", "/api/v1/items/i1", {"title": "x"}),
        ("post", "/api/v1/items", {"items": [{"item_id": "i1"}]}),
        ("get", "/api/v1/users/u1/recommendations", None),
        ("get", "/api/v1/models", None),
        ("get", "/api/v1/training-runs", None),
        ("get", "/api/v1/deployments", None),
    ],
)
def test_every_kind_of_endpoint_answers_a_json_503_during_an_outage(
    admin_client_api, database_down, method, path, body
):
    admin_client_api.get("/api/v1/models")  # the key is verified and cached: the view itself meets the outage
    database_down()
    assert_database_unavailable(getattr(admin_client_api, method)(path, body, format="json"))
    database_down.restore()
    assert not Item.objects.exists()


def test_a_request_on_a_connection_the_database_terminated_gets_a_503_and_the_next_one_reconnects(
    ingest_client, transactional_db
):
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 201  # the key is cached now
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    assert_database_unavailable(ingest_client.post("/api/v1/events", {**EVENT, "user_id": "u2"}, format="json"))
    # Django closes the broken connection as that request ends; the next request connects anew.
    assert ingest_client.post("/api/v1/events", {**EVENT, "user_id": "u3"}, format="json").status_code == 201
    assert sorted(Interaction.objects.values_list("user__external_id", flat=True)) == ["u1", "u3"]


def test_a_database_error_outside_drf_on_an_api_path_is_a_json_503(db, monkeypatch):
    def unreachable(self, request):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(CommonMiddleware, "process_request", unreachable)
    assert_database_unavailable(APIClient(raise_request_exception=False).get("/api/v1/health"))
