"""A bounded schemathesis run over every operation of the API's OpenAPI schema, with an admin key: whatever
it sends, the API never answers a 5xx, and every answer is one the schema documents (its status code, its
content type and its body)."""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from recommendations.services.api_keys import api_key_create
from recsite.wsgi import application
from registry.services import model_version_promote
from tests.registry.factories import registered_version

EXAMPLES_PER_OPERATION = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Loaded from the app itself, as a client would (serving the schema reads no table).
schema = schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.fixture
def two_versions(db, tmp_path):
    """v1 the champion and v2 a candidate, so that the model endpoints answer with bodies to check, not 404s."""
    first, _ = registered_version(tmp_path), registered_version(tmp_path)
    model_version_promote(version=first.version, actor="schemathesis")


@pytest.fixture
def admin_headers(db):
    """An admin key's header. The app keeps the test's connection between requests, as Django's test client
    does: closing it (Django does at each request's end, finding it inside the test's transaction) would end
    the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    _, secret = api_key_create(name="schemathesis", scopes=["admin"])
    yield {"Authorization": f"Api-Key {secret}"}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
# Derandomized: CI explores the same inputs each run, so a red run is a regression, not a lucky draw.
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(case, two_versions, admin_headers):
    case.call_and_validate(headers=admin_headers, checks=CHECKS)
