"""Every endpoint under /api/v1/, as the URL configuration lists them (so that an endpoint added later is in
the matrix without anyone remembering it), refuses a request without a key with a JSON 401 and a key lacking
its scope with a JSON 403. HasScope lets through a view that names no `required_scope`: this is the test that
catches one. The individual cases (unknown, revoked, expired keys; the admin scope) are in
tests/recommendations/test_auth.py."""

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from recommendations.services.api_keys import api_key_create

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]
PUBLIC = {"api/v1/health"}  # a load balancer's probe: no key by design
METHODS = ("get", "post", "put", "patch", "delete")
OTHER_SCOPE = {"ingest": "serve", "serve": "ingest", "admin": "serve"}


def api_endpoints(patterns=None, prefix: str = "") -> list[tuple[str, type]]:
    """(route, view class) of every URL pattern under api/v1/."""
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += api_endpoints(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
            found.append((route, pattern.callback.view_class))
    return found


def concrete(route: str) -> str:
    """The route with an example value in each parameter: 1 for an int, "x" for the others."""
    return "/" + re.sub(r"<(\w+):\w+>", lambda match: "1" if match[1] == "int" else "x", route)


ENDPOINTS = [
    pytest.param(route, view, method, id=f"{method.upper()} {route}")
    for route, view in api_endpoints()
    if route not in PUBLIC
    for method in METHODS
    if hasattr(view, method)
]


def test_the_matrix_covers_the_api():
    assert len(ENDPOINTS) >= 20 and "api/v1/health" in {route for route, _ in api_endpoints()}


@pytest.mark.parametrize("route, view, method", ENDPOINTS)
def test_a_request_without_a_key_gets_a_json_401(route, view, method):
    response = getattr(APIClient(), method)(concrete(route), {}, format="json")
    assert response.status_code == 401, f"{view.__name__} answered {response.status_code}"
    assert response["Content-Type"] == "application/json" and response.json()["error"] == "not_authenticated"


@pytest.mark.parametrize("route, view, method", ENDPOINTS)
def test_a_key_without_the_endpoints_scope_gets_a_json_403(route, view, method):
    required = getattr(view, "required_scope", None)
    assert required in OTHER_SCOPE, f"{view.__name__} names no required_scope: any key, or none, may call it"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key_create(name='other', scopes=[OTHER_SCOPE[required]])[1]}")
    response = getattr(client, method)(concrete(route), {}, format="json")
    assert response.status_code == 403, f"{view.__name__} answered {response.status_code}"
    assert response["Content-Type"] == "application/json" and response.json()["error"] == "permission_denied"
