import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from recommendations.models import ApiKey

pytestmark = pytest.mark.django_db

EVENT = {"user_id": "u", "item_id": "i", "event_type": "view"}


def test_a_request_without_a_key_gets_a_401(api_client):
    response = api_client.post("/api/v1/events", EVENT, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"


def test_an_unknown_key_gets_a_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Api-Key abcdefgh.notarealsecret")
    assert api_client.post("/api/v1/events", EVENT, format="json").status_code == 401


def test_a_revoked_key_gets_a_401(ingest_client):
    ApiKey.objects.update(revoked=True)
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 401


def test_a_key_revoked_while_cached_is_accepted_until_the_cache_time_has_passed(ingest_client, settings):
    settings.API_KEY_CACHE_SECONDS = 60
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 201
    ApiKey.objects.update(revoked=True)
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 201


def test_a_revoked_key_is_refused_once_the_cache_time_has_passed(ingest_client, settings):
    settings.API_KEY_CACHE_SECONDS = 0.3
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 201
    ApiKey.objects.update(revoked=True)
    time.sleep(0.35)
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 401


def test_without_a_cache_time_a_revocation_takes_effect_at_once(ingest_client, settings):
    settings.API_KEY_CACHE_SECONDS = 0
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 201
    ApiKey.objects.update(revoked=True)
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 401


def test_a_cached_key_is_refused_from_its_expiry_date_on(ingest_client, settings, monkeypatch):
    settings.API_KEY_CACHE_SECONDS = 3600
    now = timezone.now()
    ApiKey.objects.update(expiry_date=now + timedelta(minutes=1))
    assert ingest_client.post("/api/v1/events", EVENT, format="json").status_code == 201
    monkeypatch.setattr(timezone, "now", lambda: now + timedelta(minutes=2))
    response = ingest_client.post("/api/v1/events", EVENT, format="json")
    assert response.status_code == 401
    assert response.json()["message"] == "This API key has expired."


def test_a_key_without_the_scope_gets_a_403(serve_client):
    assert serve_client.post("/api/v1/events", EVENT, format="json").status_code == 403


def test_the_admin_scope_includes_the_others(admin_client_api):
    assert admin_client_api.post("/api/v1/events", EVENT, format="json").status_code == 201


def test_keys_are_stored_hashed(capsys):
    call_command("create_api_key", "svc", "--scopes", "ingest,serve")
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    stored = ApiKey.objects.get(name="svc")
    assert secret.startswith(stored.prefix + ".")
    assert secret.split(".", 1)[1] not in stored.hashed_key
    assert stored.scopes == ["ingest", "serve"]


def test_create_api_key_prints_a_working_key_alone_on_the_last_line(capsys, api_client):
    call_command("create_api_key", "svc", "--scopes", "ingest")
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    api_client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    assert api_client.post("/api/v1/events", EVENT, format="json").status_code == 201


def test_create_api_key_refuses_an_unknown_scope():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="superuser"):
        call_command("create_api_key", "svc", "--scopes", "ingest,superuser")
    assert not ApiKey.objects.exists()


def test_health_needs_no_key_and_reports_the_database(api_client):
    response = api_client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_the_openapi_schema_and_docs_are_served(api_client):
    schema = api_client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/events" in schema.content
    assert api_client.get("/api/docs/").status_code == 200
