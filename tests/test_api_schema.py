"""The OpenAPI schema: it validates without a warning, documents every operation's request, answer and failures
(in the one error shape the API sends), names the Api-Key scheme, and its docs pages need no internet."""

import json
import re
from pathlib import Path

import pytest
import requests
import schemathesis
from django.contrib.staticfiles import finders
from django.core import checks
from django.core.management import call_command
from django.test import Client
from schemathesis.core.transport import Response

from recommendations.services.catalog import ItemInput, item_upsert
from registry.services import model_version_promote
from retraining.services.rollout import challenger_deploy
from tests.registry.factories import registered_version
from tests.support.html import offsite_assets, page_assets

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_REF = "#/components/schemas/"


@pytest.fixture(scope="module")
def schema():
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    return response.json()


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def component(schema, reference: dict) -> dict:
    return schema["components"]["schemas"][reference["$ref"].removeprefix(SCHEMA_REF)]


def body_schema(operation: dict, status: str) -> dict:
    return operation["responses"][status]["content"]["application/json"]["schema"]


def request_schema(operation: dict) -> dict:
    return operation["requestBody"]["content"]["application/json"]["schema"]


def test_the_schema_validates_with_no_warning_or_error(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_serving_the_schema_writes_no_warning(capfd, caplog):
    capfd.readouterr()
    response = Client().get("/api/schema/")
    assert response.status_code == 200
    assert "Warning" not in capfd.readouterr().err
    assert not [record for record in caplog.records if record.levelname in {"WARNING", "ERROR"}]


def test_the_deploy_check_reports_nothing_about_the_schema_and_nothing_mutes_it(settings):
    assert not [check for check in settings.SILENCED_SYSTEM_CHECKS if check.startswith("drf_spectacular")]
    found = checks.run_checks(include_deployment_checks=True)
    assert [message.msg for message in found if message.id.startswith("drf_spectacular")] == []


def test_every_keyed_operation_requires_the_api_key_scheme_in_the_authorization_header(schema):
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert "Api-Key <key>" in scheme["description"]
    for name, operation in operations(schema):
        expected = [{}] if name == "GET /api/v1/health" else [{"ApiKey": []}]
        assert operation["security"] == expected, name


def test_requests_of_different_operations_are_different_components(schema):
    paths = schema["paths"]
    promote = component(schema, request_schema(paths["/api/v1/models/{version}/promote"]["post"]))
    rollback = component(schema, request_schema(paths["/api/v1/models/rollback"]["post"]))
    challenger = component(schema, request_schema(paths["/api/v1/deployments/challenger"]["post"]))
    item = component(schema, request_schema(paths["/api/v1/items/{item_id}"]["put"]))
    assert set(promote["properties"]) == {"reason", "expected_current"}
    assert set(rollback["properties"]) == {"reason", "expected_current", "version"}
    assert {"version", "mode", "steps", "replace"} <= set(challenger["properties"])
    assert "item_id" not in item["properties"] and "title" in item["properties"]
    recommendations = component(schema, body_schema(paths["/api/v1/users/{user_id}/recommendations"]["get"], "200"))
    assert {"recommendation_id", "items", "strategy"} <= set(recommendations["properties"])


def test_items_are_posted_as_an_object_holding_the_list(schema):
    body = component(schema, request_schema(schema["paths"]["/api/v1/items"]["post"]))
    assert body["required"] == ["items"]
    assert body["properties"]["items"]["type"] == "array"
    assert set(component(schema, body["properties"]["items"]["items"])["properties"]) >= {"item_id", "title"}


def test_an_event_is_posted_alone_or_as_a_batch(schema):
    body = component(schema, request_schema(schema["paths"]["/api/v1/events"]["post"]))
    one, batch = (component(schema, choice) for choice in body["oneOf"])
    assert {"user_id", "item_id", "event_type"} <= set(one["required"])
    assert batch["required"] == ["events"]
    assert component(schema, batch["properties"]["events"]["items"]) == one


@pytest.mark.parametrize(
    "path, method, statuses",
    [
        ("/api/v1/items/{item_id}/similar", "get", ["200"]),
        ("/api/v1/models/compare", "get", ["200"]),
        ("/api/v1/comparisons", "post", ["202", "404", "422", "503"]),
        ("/api/v1/comparisons/{comparison_id}", "get", ["200", "404"]),
        ("/api/v1/models/{version}/online-metrics", "get", ["200"]),
        ("/api/v1/deployments", "get", ["200"]),
        ("/api/v1/deployments/challenger/report", "get", ["200", "404"]),
        ("/api/v1/drift-reports", "post", ["201", "404"]),
        ("/api/v1/drift-reports/latest", "get", ["200", "404"]),
        ("/api/v1/trigger-evaluations/latest", "get", ["200", "404"]),
        ("/api/v1/training-runs", "get", ["200"]),
        ("/api/v1/training-runs/{run_id}", "get", ["200", "404"]),
        ("/api/v1/retrain", "post", ["202", "409", "503"]),
        ("/api/v1/models/{version}/promote", "post", ["200", "409", "422"]),
        ("/api/v1/models/rollback", "post", ["200", "409", "422"]),
        ("/api/v1/items/{item_id}", "put", ["200", "201"]),
    ],
)
def test_each_endpoint_documents_the_body_of_each_of_its_answers(schema, path, method, statuses):
    operation = schema["paths"][path][method]
    for status in statuses:
        reference = body_schema(operation, status)
        target = component(schema, reference.get("items", reference))
        assert target.get("properties"), f"{method} {path} {status}"


def test_every_failure_has_the_error_body_and_every_keyed_operation_documents_401_403_429_and_503(schema):
    for name, operation in operations(schema):
        failures = {status for status in operation["responses"] if status >= "400"}
        assert {"500", "503"} <= failures, name
        if operation["security"] != [{}]:
            assert {"401", "403", "429"} <= failures, name
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= failures, name
        for status in failures - ({"503"} if name == "GET /api/v1/health" else set()):
            assert body_schema(operation, status) == {"$ref": SCHEMA_REF + "Error"}, f"{name} {status}"
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message", "errors"}
    location = component(schema, error["properties"]["errors"]["items"])
    assert set(location["required"]) == {"index", "field", "message"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "content_type, body, status",
    [
        ("application/json", b'{"user_id": ', 400),
        ("text/plain", b"hello", 415),
        ("application/json", b'{"user_id": 5}', 400),
    ],
)
def test_the_api_answers_failures_in_the_documented_error_shape(ingest_client, content_type, body, status):
    response = ingest_client.generic("POST", "/api/v1/events", body, content_type=content_type)
    assert response.status_code == status
    assert set(response.json()) == {"error", "message", "errors"}
    assert response.json()["errors"]
    assert all(set(location) == {"index", "field", "message"} for location in response.json()["errors"])


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_the_docs_pages_load_their_scripts_and_styles_from_our_own_static_files(url, settings):
    response = Client().get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert offsite_assets(html) == []
    assert "cdn." not in html.lower() and "unpkg" not in html.lower()
    assets = [asset for asset in page_assets(html) if asset.startswith("/" + settings.STATIC_URL.strip("/"))]
    assert assets, "the page loads its scripts and styles from STATIC_URL"
    for asset in assets:
        assert finders.find(asset.removeprefix("/" + settings.STATIC_URL.strip("/") + "/")), asset


def test_swagger_ui_asks_no_online_validator_about_the_schema():
    html = Client().get("/api/docs/").content.decode()
    assert re.search(r'"validatorUrl":\s*null', html)


def test_ci_validates_the_schema_and_fails_on_a_warning():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"manage\.py spectacular --validate --fail-on-warn", ci)


@pytest.fixture
def running_experiment(db, tmp_path):
    """v1 the champion, v2 in an A/B test against it, and an item: the endpoints answer with full bodies."""
    first, second = registered_version(tmp_path), registered_version(tmp_path)
    model_version_promote(version=first.version, actor="test")
    challenger_deploy(version=second.version, mode="ab", actor="test", reason="")
    item_upsert(items=[ItemInput(item_id="i1", title="One", categories=["drama"])])


def test_the_answers_of_a_live_service_match_the_schema(running_experiment, admin_client_api):
    """Each answer below is checked against its operation's documented status, content type and body."""
    openapi = schemathesis.openapi.from_dict(Client().get("/api/schema/", HTTP_ACCEPT="application/json").json())
    calls = [
        ("GET", "/api/v1/deployments", {}),
        ("GET", "/api/v1/deployments/challenger/report", {}),
        ("GET", "/api/v1/items/i1/similar", {}),
        ("GET", "/api/v1/models/compare?a=1&b=2", {}),
        ("POST", "/api/v1/comparisons", {"versions": [1, 2]}),
        ("GET", "/api/v1/comparisons/{comparison}", {}),  # the comparison the POST queued
        ("GET", "/api/v1/models/2/online-metrics?bucket=hour", {}),
        ("GET", "/api/v1/health", {}),
        ("POST", "/api/v1/models/2/promote", {"expected_current": 5}),  # 409: the champion is v1
        ("DELETE", "/api/v1/deployments/challenger", {}),
        ("GET", "/api/v1/deployments/challenger/report", {}),  # the stopped experiment's final report
        ("DELETE", "/api/v1/deployments/challenger", {}),  # 400: nothing is running
    ]
    statuses, comparison = [], None
    for method, url, body in calls:
        url = url.format(comparison=comparison)
        response = admin_client_api.generic(method, url, json.dumps(body), content_type="application/json")
        path = url.split("?")[0]
        templates = [p for p in openapi.raw_schema["paths"] if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", p), path)]
        template = path if path in templates else templates[0]
        openapi[template][method].validate_response(_as_checked_response(response, method, url))
        statuses.append(response.status_code)
        comparison = response.json()["id"] if url == "/api/v1/comparisons" else comparison
    assert statuses == [200, 200, 200, 200, 202, 200, 200, 200, 409, 200, 200, 400]


def _as_checked_response(response, method: str, url: str) -> Response:
    return Response(
        status_code=response.status_code,
        headers={name: [value] for name, value in response.headers.items()},
        content=response.content,
        request=requests.Request(method, "http://testserver" + url).prepare(),
        elapsed=0.0,
        verify=True,
    )
