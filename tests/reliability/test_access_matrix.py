"""Access matrices over the URLs as the URL configuration lists them, so that a URL added later is in the
matrix without anyone remembering it.

API: every endpoint under /api/v1/ refuses a request without a key with a JSON 401 and a key lacking its scope
with a JSON 403. HasScope lets through a view that names no `required_scope`: this is the test that catches one.
The individual cases (unknown, revoked, expired keys; the admin scope) are in tests/recommendations/test_auth.py.

Admin: a logged-in staff member's browser must not be made to POST from another site: every admin URL (the model
pages and the custom promote, rollback, retrain and experiment views) refuses a POST without a CSRF token. The
promote view and the retrain button have their own tests in tests/registry/test_registry_api_and_admin.py and
tests/retraining/test_retraining_api_and_admin.py."""

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern
from rest_framework.test import APIClient

from recommendations.services.api_keys import api_key_create
from registry.models import DeploymentChange
from retraining.models import TrainingRun

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]
PUBLIC = {"api/v1/health"}  # a load balancer's probe: no key by design
METHODS = ("get", "post", "put", "patch", "delete")
OTHER_SCOPE = {"ingest": "serve", "serve": "ingest", "admin": "serve"}


def routes(under: str, patterns=None, prefix: str = "") -> list[tuple[str, URLPattern]]:
    """(route, pattern) of every path() under `under` (re_path() catch-alls are left out: they have no route)."""
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += routes(under, pattern.url_patterns, route)
        elif isinstance(pattern.pattern, RoutePattern) and route.startswith(under):
            found.append((route, pattern))
    return found


def concrete(route: str) -> str:
    """The route as a path: 1 in each int or path parameter (an object id in the admin), "x" in the others."""
    return "/" + re.sub(r"<(?:(\w+):)?\w+>", lambda match: "x" if match[1] == "str" else "1", route)


def api_endpoints() -> list[tuple[str, type]]:
    return [(route, pattern.callback.view_class) for route, pattern in routes("api/v1/")]


ENDPOINTS = [
    pytest.param(route, view, method, id=f"{method.upper()} {route}")
    for route, view in api_endpoints()
    if route not in PUBLIC
    for method in METHODS
    if hasattr(view, method)
]


def test_the_api_matrix_covers_the_api():
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


ADMIN_ROUTES = [route for route, _ in routes("admin/")]


def test_the_admin_matrix_covers_the_custom_admin_views():
    custom = {
        "registry/modelversion/<int:pk>/promote/",
        "registry/modelversion/<int:pk>/rollback/",
        "retraining/trainingrun/retrain/",
    }
    assert {route.removeprefix("admin/") for route in ADMIN_ROUTES} >= custom


def test_every_admin_post_without_a_csrf_token_is_refused(django_user_model):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(django_user_model.objects.create(username="ops", is_staff=True, is_superuser=True))
    answers = {route: browser.post(concrete(route), {"reason": "forged"}).status_code for route in ADMIN_ROUTES}
    assert {route: status for route, status in answers.items() if status != 403} == {}
    assert not TrainingRun.objects.exists() and not DeploymentChange.objects.exists()
