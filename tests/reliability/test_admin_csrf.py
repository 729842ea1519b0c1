"""A logged-in staff member's browser must not be made to POST to the admin from another site: every admin URL
the URL configuration lists (the model pages and the custom promote, rollback, retrain and experiment views)
refuses a POST without a CSRF token. The promote view and the retrain button have their own tests in
tests/registry/test_registry_api_and_admin.py and tests/retraining/test_retraining_api_and_admin.py."""

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern

from registry.models import DeploymentChange
from retraining.models import TrainingRun

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]


def admin_routes(patterns=None, prefix: str = "") -> list[str]:
    """Every route under admin/ written as a path (regex catch-alls and the app index pages are left out)."""
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += admin_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and isinstance(pattern.pattern, RoutePattern) and route.startswith("admin/"):
            found.append(route)
    return found


ROUTES = admin_routes()


def test_the_matrix_covers_the_custom_admin_views():
    custom = {"registry/modelversion/<int:pk>/promote/", "registry/modelversion/<int:pk>/rollback/",
              "retraining/trainingrun/retrain/"}
    assert {route.removeprefix("admin/") for route in ROUTES} >= custom


def test_every_admin_post_without_a_csrf_token_is_refused(django_user_model):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(django_user_model.objects.create(username="ops", is_staff=True, is_superuser=True))
    answers = {route: browser.post("/" + re.sub(r"<[^>]+>", "1", route), {"reason": "forged"}).status_code
               for route in ROUTES}
    assert {route: status for route, status in answers.items() if status != 403} == {}
    assert not TrainingRun.objects.exists() and not DeploymentChange.objects.exists()
