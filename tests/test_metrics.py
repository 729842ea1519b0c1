"""GET /metrics: what a scrape shows after real traffic, who may read it, and the labels it uses."""

import time
import uuid
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from unittest import mock

import pytest
from django.db import OperationalError
from prometheus_client.parser import text_string_to_metric_families

from recommendations.services.impressions import MAX_BUFFERED, ImpressionBuffer
from recsite.gunicorn_worker import QUEUED_AT
from recsite.metrics import RUNTIME_KEYS_EXPORTED
from registry.models import ModelVersion
from retraining.models import DriftReport, TrainingRun, TriggerEvaluation
from retraining.services.drift import drift_check_run
from retraining.services.pipeline import training_run_process
from retraining.services.policy import policy_active
from retraining.services.runs import training_run_request
from retraining.services.triggers import triggers_check
from tests.retraining.factories import dataset_store, learnable_dataset

pytestmark = pytest.mark.django_db
CUTOFF = datetime(2025, 6, 1, tzinfo=UTC)
LOCAL = ["127.0.0.0/8", "::1/128"]


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels without pid): value}, pids added up."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid")))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(
        value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= set(sample_labels)
    )


def series(samples: dict, name: str) -> dict[tuple, float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


@pytest.fixture(autouse=True)
def model_store(settings, tmp_path):
    settings.MODEL_STORE = tmp_path / "store"
    settings.MODEL_POLL_SECONDS = 0


def trained():
    """History, a training run that promoted its model, a trigger check and a drift report: real rows."""
    dataset_store(learnable_dataset(users=120, items=80, per_user=24))
    run = training_run_request(trigger="manual", data_until=CUTOFF)
    training_run_process(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "promoted", run.gate
    policy = policy_active()
    policy.drift_window_min_events = 500
    policy.save()
    report = drift_check_run(policy=policy, now=CUTOFF, champion=run.model_version)
    triggers_check(now=CUTOFF + timedelta(days=30))  # the time trigger fires and queues the next run
    return run, report


def post_events(client, events) -> int:
    return client.post("/api/v1/events", {"events": events}, content_type="application/json").status_code


def event(user, item, kind="view", event_id=None) -> dict:
    return {"user_id": user, "item_id": item, "event_type": kind, "event_id": event_id or str(uuid.uuid4())}


def test_a_scrape_after_traffic_shows_every_family_with_the_traffic_counted(client, ingest_client, serve_client):
    before = scrape(client)
    run, report = trained()
    repeated = str(uuid.uuid4())
    assert (
        post_events(ingest_client, [event("user-1", "item-1", "view", repeated), event("user-1", "item-2", "like")])
        == 201
    )
    assert post_events(ingest_client, [event("user-1", "item-1", "view", repeated)]) == 201  # a duplicate
    assert post_events(ingest_client, [event("user-1", "item-1", "rating")]) == 400  # a rating needs a value
    for user in ("user-1", "user-2", "nobody-knows-me"):
        assert serve_client.get(f"/api/v1/users/{user}/recommendations").status_code == 200
    after = scrape(client)

    def grew(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("recsite_events_total", event_type="view", outcome="accepted") == 1
    assert grew("recsite_events_total", event_type="like", outcome="accepted") == 1
    assert grew("recsite_events_total", event_type="view", outcome="duplicate") == 1
    assert grew("recsite_events_total", event_type="rating", outcome="rejected") == 1
    assert grew("recsite_ingest_batch_size_count", kind="events") == 3
    assert grew("recsite_ingest_batch_size_sum", kind="events") == 4
    version = str(run.model_version.version)
    assert grew("recsite_recommendations_served_total", version=version, arm="champion", strategy="model") == 2
    assert grew("recsite_recommendations_served_total", version="none", strategy="popular") == 1
    assert grew("recsite_recommendation_fallbacks_total", reason="unknown_user") == 1
    assert grew("recsite_scoring_duration_seconds_count", kind="live") == 2
    assert grew("recsite_scoring_duration_seconds_sum", kind="live") > 0
    assert grew("recsite_model_loads_total") == 1
    assert grew("recsite_impressions_written_total") == 2
    assert grew("recsite_training_duration_seconds_count") == 1
    route = "api/v1/users/<str:user_id>/recommendations"
    assert grew("recsite_http_request_duration_seconds_count", route=route, method="GET", status="200") == 3
    assert grew("recsite_http_request_duration_seconds_count", route="api/v1/events", status="400") == 1
    assert not any("user-1" in str(labels) for labels in series(after, "recsite_http_request_duration_seconds_count"))

    assert total(after, "recsite_serving_model_version", alias="champion") == run.model_version.version
    assert 0 <= total(after, "recsite_item_snapshot_age_seconds") < 60
    assert total(after, "recsite_training_peak_memory_bytes") > 10 * 2**20
    # Read from the database at scrape time.
    assert total(after, "recsite_database_metrics_up") == 1
    assert total(after, "recsite_training_runs_total", trigger="manual", outcome="promoted") == 1
    assert total(after, "recsite_training_runs_in_flight", status="queued") == 1  # the time trigger's run
    assert total(after, "recsite_triggers_fired_total", kind="time") == 1
    assert total(after, "recsite_deployed_model_version", alias="champion") == run.model_version.version
    assert total(after, "recsite_model_size_bytes", alias="champion") == run.model_version.artifact_size > 0
    assert total(after, "recsite_model_training_seconds", alias="champion") > 0
    ndcg = run.model_version.metrics["ndcg@10"]
    assert total(after, "recsite_champion_metric", metric="ndcg@10") == pytest.approx(ndcg) and ndcg > 0
    assert total(after, "recsite_champion_baseline_metric", baseline="popularity", metric="ndcg@10") > 0
    psi = {dict(labels)["feature"]: value for labels, value in series(after, "recsite_drift_psi").items()}
    expected = {name: score["psi"] for name, score in report.feature_scores.items() if score.get("psi") is not None}
    assert psi == pytest.approx(expected) and any(value > 0 for value in psi.values())


def test_the_database_figures_follow_the_rows_not_the_process(client):
    TrainingRun.objects.create(trigger="drift", status="failed", in_flight=None)
    TrainingRun.objects.create(trigger="drift", status="failed", in_flight=None)
    TriggerEvaluation.objects.create(clock=CUTOFF, fired="volume")
    TriggerEvaluation.objects.create(clock=CUTOFF, fired="")
    samples = scrape(client)
    assert total(samples, "recsite_training_runs_total", trigger="drift", outcome="failed") == 2
    assert total(samples, "recsite_triggers_fired_total") == 1
    assert total(samples, "recsite_training_runs_in_flight") == 0
    assert total(samples, "recsite_deployed_model_version", alias="champion") == 0
    assert not series(samples, "recsite_drift_psi") and not DriftReport.objects.exists()
    assert not ModelVersion.objects.exists() and not series(samples, "recsite_champion_metric")


def test_a_database_that_fails_leaves_its_figures_out_and_still_serves_the_process_metrics(client):
    with mock.patch("recsite.metrics_db._runs", side_effect=OperationalError("gone")):
        samples = scrape(client)
    assert total(samples, "recsite_database_metrics_up") == 0
    assert not series(samples, "recsite_training_runs_total")
    assert series(samples, "recsite_http_request_duration_seconds_count")


def test_an_impression_buffer_that_overflows_while_flushes_fail_counts_what_it_gave_up(settings, monkeypatch):
    buffer = ImpressionBuffer()
    buffer._buffer = [object()] * (MAX_BUFFERED + 7)
    monkeypatch.setattr("recommendations.sql.impressions_insert", mock.Mock(side_effect=OperationalError("down")))
    with pytest.raises(OperationalError):
        buffer.flush()
    assert buffer.dropped == 7 and buffer.buffered() == MAX_BUFFERED


def test_runtime_counters_are_exported_by_what_they_grew(runtime, client):
    before = total(scrape(client), "recsite_shadow_jobs_total", outcome="dropped_full")
    runtime.shadow.stats["dropped_full"] += 3
    runtime.metrics.refresh()
    runtime.metrics.refresh()  # nothing grew since: nothing added
    assert total(scrape(client), "recsite_shadow_jobs_total", outcome="dropped_full") - before == 3


def test_every_runtime_counter_is_exported(runtime):
    runtime.shadow.submit(lambda: None)  # so that the shadow counts are in the dict
    keys = set(runtime.counters())
    assert {key for key in keys if not key.startswith("shadow_")} == RUNTIME_KEYS_EXPORTED
    assert "shadow_submitted" in keys


# --- Access ---------------------------------------------------------------------------------------------------


def test_a_local_deployment_serves_loopback_and_refuses_other_addresses(client):
    assert client.get("/metrics").status_code == 200
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "forbidden" and "METRICS_TOKEN" in body["message"] and body["errors"] == []


def test_a_production_deployment_with_nothing_configured_refuses_everyone(client, settings):
    settings.METRICS_ALLOWED_NETWORKS, settings.METRICS_TOKEN = [], ""
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_the_bearer_token_opens_metrics_from_anywhere_and_a_wrong_one_does_not(client, settings):
    settings.METRICS_ALLOWED_NETWORKS, settings.METRICS_TOKEN = [], "s3cret-token"
    assert (
        client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    )
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="s3cret-token").status_code == 403


def test_an_allowed_network_is_judged_by_the_peer_address_never_a_forwarded_header(client, settings):
    settings.METRICS_ALLOWED_NETWORKS, settings.METRICS_TOKEN = [ip_network("172.28.0.10/32")], ""
    assert client.get("/metrics", REMOTE_ADDR="172.28.0.10").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="172.28.0.11").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="172.28.0.10").status_code == 403


def test_metrics_stay_out_of_the_api_schema(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    assert schema["paths"] and not any(path.startswith("/metrics") for path in schema["paths"])


def test_metrics_answer_only_get_with_a_json_405(client):
    response = client.post("/metrics")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert response["Allow"] == "GET, HEAD"


def test_the_settings_default_to_loopback_when_local_and_to_nothing_in_production(monkeypatch):
    import importlib

    from django.core.exceptions import ImproperlyConfigured

    import recsite.settings as module

    try:
        monkeypatch.setenv("DEPLOYMENT", "production")
        assert importlib.reload(module).METRICS_ALLOWED_NETWORKS == []
        monkeypatch.setenv("DEPLOYMENT", "local")
        assert [ip_network(cidr) for cidr in LOCAL] == importlib.reload(module).METRICS_ALLOWED_NETWORKS
        monkeypatch.setenv("METRICS_ALLOWED_NETWORKS", "10.0.0.0/8, not-a-network")
        with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_NETWORKS"):
            importlib.reload(module)
    finally:
        monkeypatch.undo()
        importlib.reload(module)


def test_a_shed_request_is_timed_under_its_route_with_its_503(client, ingest_client, settings):
    settings.SHED_EVENTS_QUEUE_SECONDS = 0.5  # posted events' own bound
    labels = {"route": "api/v1/events", "method": "POST", "status": "503"}
    before = total(scrape(client), "recsite_http_request_duration_seconds_count", **labels)
    response = ingest_client.post(
        "/api/v1/events", event("u", "i"), format="json", **{QUEUED_AT: time.monotonic() - 0.6}
    )
    assert response.status_code == 503
    assert total(scrape(client), "recsite_http_request_duration_seconds_count", **labels) == before + 1


def test_an_unknown_path_is_labelled_unmatched_not_by_its_path(client):
    client.get("/no/such/page-12345")
    samples = scrape(client)
    routes = {dict(labels)["route"] for labels in series(samples, "recsite_http_request_duration_seconds_count")}
    assert "unmatched" in routes and not any("12345" in route for route in routes)
