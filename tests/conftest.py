import pytest
from rest_framework.test import APIClient

from recommendations.services.api_keys import api_key_create


@pytest.fixture
def api_client():
    return APIClient()


def _client_with(scopes):
    client = APIClient()
    _, secret = api_key_create(name=f"test-{'-'.join(scopes)}", scopes=scopes)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    return client


@pytest.fixture
def ingest_client(db):
    return _client_with(["ingest"])


@pytest.fixture
def serve_client(db):
    return _client_with(["serve"])


@pytest.fixture
def admin_client_api(db):
    return _client_with(["admin"])
