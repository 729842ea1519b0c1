"""`/api/v1/health` says whether this web process serves the champion it is told to serve, with a status code a
load balancer can act on, and never shows exception text to its unauthenticated callers."""

import socket
from pathlib import Path

import pytest
from django.db import connection

from registry.services import model_version_promote
from tests.registry.factories import registered_version

URL = "/api/v1/health"


@pytest.fixture(autouse=True)
def fresh_process(settings, tmp_path):
    settings.MODEL_STORE, settings.RANKER_COMPILED = tmp_path / "store", False
    settings.MODEL_POLL_SECONDS, settings.MODEL_RETRY_SECONDS = 0, 0


def _damage(version) -> None:
    Path(version.artifact_path).write_bytes(b"damaged after promotion")


@pytest.mark.django_db
def test_a_process_serving_the_champion_is_ok(api_client, tmp_path, runtime):
    version = registered_version(tmp_path)
    model_version_promote(version=version.version, actor="test")
    response = api_client.get(URL)
    assert (response.status_code, response.json()) == (200, {"status": "ok", "database": "ok"})
    assert runtime.models.current().pointers.champion == version.version, "the health check loaded the champion"


@pytest.mark.django_db
def test_a_fresh_process_that_cannot_load_the_champion_is_degraded_and_out_of_rotation(api_client, tmp_path):
    version = registered_version(tmp_path)
    model_version_promote(version=version.version, actor="test")
    _damage(version)
    response = api_client.get(URL)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert (body["model"]["serving_version"], body["model"]["expected_version"]) == (None, version.version)
    assert body["model"]["error"] == f"v{version.version} could not be loaded: its artifact fails verification"
    assert str(tmp_path) not in response.content.decode()


@pytest.mark.django_db
def test_a_process_still_serving_the_previous_champion_is_degraded_but_stays_in_rotation(api_client, tmp_path):
    first, second = registered_version(tmp_path), registered_version(tmp_path)
    model_version_promote(version=first.version, actor="test")
    assert api_client.get(URL).status_code == 200
    model_version_promote(version=second.version, actor="test")
    _damage(second)
    response = api_client.get(URL)
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "database": "ok",
        "model": {
            "serving_version": first.version,
            "expected_version": second.version,
            "error": f"v{second.version} could not be loaded: its artifact fails verification",
        },
    }


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="a database server to be unreachable")
def test_with_the_database_down_health_is_unavailable_with_a_fixed_message_and_no_connection_details(
    api_client, caplog
):
    port, saved = _closed_port(), dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port))
    try:
        response = api_client.get(URL)
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
    assert response.status_code == 503 and response["Content-Type"] == "application/json"
    assert response.json() == {
        "status": "unavailable",
        "database": "unreachable",
        "message": "The database is unreachable.",
    }
    assert str(port) not in response.content.decode() and "127.0.0.1" not in response.content.decode()
    assert any(str(port) in record.exc_text for record in caplog.records if record.exc_text), "details go to the log"
