import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from recommendations.clock import clock_set
from recommendations.models import Impression, ImpressionOutcome
from retraining.dashboard import dashboard_charts, dashboard_health
from retraining.models import TrainingRun, TriggerEvaluation
from retraining.services.schedule import CHECK_TRIGGERS
from tests.recommendations.factories import serve, user
from tests.retraining.dashboard_factories import dashboard_history
from tests.support.html import offsite_assets

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(tmp_path, settings):
    settings.MODEL_STORE = tmp_path / "store"
    return dashboard_history(tmp_path, now=timezone.now())


def embedded_charts(page) -> dict:
    """The Chart.js configurations the page embeds (json_script), by chart name."""
    html = page.content.decode()
    charts = {}
    for name in ("offline", "online", "drift", "experiment", "training", "triggers"):
        marker = f'<script id="chart-data-{name}" type="application/json">'
        if marker in html:
            charts[name] = json.loads(html.split(marker, 1)[1].split("</script>", 1)[0])
    return charts


def test_the_admin_home_links_to_the_dashboard(staff_client):
    assert b'href="/admin/dashboard/"' in staff_client.get("/admin/").content


def test_the_dashboard_embeds_every_chart_as_json_and_loads_the_vendored_chartjs(staff_client, history):
    page = staff_client.get("/admin/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    # Not a search for "cdn" in the page: the CSRF token, random letters, sometimes holds those three.
    assert "/static/vendor/chartjs-4.6.1/chart.umd.min.js" in html and offsite_assets(html) == []
    assert set(embedded_charts(page)) == {"offline", "online", "drift", "experiment", "training", "triggers"}
    assert "new Chart" not in html  # drawn by the static dashboard.js, no inline script
    assert f"{history.v1}" in html and "ab at 50% of users" in html


def test_the_offline_chart_marks_the_promoted_and_the_rejected_version_and_draws_the_baselines(history):
    chart = dashboard_charts(now=history.now)["offline"]
    model, *baselines = chart["data"]["datasets"]
    assert chart["data"]["labels"] == ["v1", "v2", "v3"]
    assert model["data"] == [0.12, 0.11, 0.14]
    assert model["pointStyle"] == ["triangle", "crossRot", "circle"]
    assert {b["label"]: b["data"] for b in baselines} == {
        "collaborative baseline": [0.09] * 3,
        "popularity baseline": [0.05] * 3,
    }


def test_the_online_chart_has_ctr_and_hit_rate_per_version_and_day_from_the_attributed_events(history):
    chart = dashboard_charts(now=history.now)["online"]
    series = {d["label"]: d["data"] for d in chart["data"]["datasets"]}
    assert set(series) == {"v1 CTR", "v1 hit rate@10", "v3 CTR", "v3 hit rate@10"}
    # The challenger's lists (the odd users', in the last day) earned no click 20 hours ago and one each 2 hours ago.
    same_day = (history.now - timedelta(hours=20)).date() == (history.now - timedelta(hours=2)).date()
    assert [value for value in series["v3 CTR"] if value is not None] == ([0.5] if same_day else [0.0, 1.0])
    assert series["v3 CTR"] == series["v3 hit rate@10"]
    assert all(0 <= value <= 1 for values in series.values() for value in values if value is not None)


def test_the_drift_chart_has_psi_per_feature_and_the_threshold_lines(history):
    chart = dashboard_charts(now=history.now)["drift"]
    series = {d["label"]: d["data"] for d in chart["data"]["datasets"]}
    assert series["user_event_count"] == [0.02, 0.08, 0.3] and series["event_type"] == [0.01, 0.04, 0.15]
    thresholds = {d["data"][0] for d in chart["data"]["datasets"] if d.get("threshold")}
    assert thresholds == {0.1, 0.25, 0.2}  # 0.2: the default policy's own threshold


def test_the_experiment_chart_has_both_arms_during_the_experiment(history):
    chart = dashboard_charts(now=history.now)["experiment"]
    labels = {d["label"] for d in chart["data"]["datasets"]}
    assert labels == {
        "champion (v1) CTR",
        "champion (v1) hit rate@10",
        "challenger (v3) CTR",
        "challenger (v3) hit rate@10",
    }
    assert f"experiment {history.experiment_id}" in chart["title"] and "per hour" in chart["title"]


def test_training_cost_and_the_trigger_timeline(history):
    charts = dashboard_charts(now=history.now)
    duration, size = charts["training"]["data"]["datasets"]
    assert duration["data"] == [30.0, 40.0, 50.0] and all(value > 0 for value in size["data"])
    triggers = {d["label"]: sum(d["data"]) for d in charts["triggers"]["data"]["datasets"]}
    assert triggers == {"drift": 1, "manual": 1, "volume": 1}


def test_an_empty_system_shows_no_data_and_never_for_every_process(staff_client):
    page = staff_client.get("/admin/dashboard/")
    html = page.content.decode()
    assert page.status_code == 200 and embedded_charts(page) == {}
    assert html.count("No data yet.") == 6 and html.count("never") == 4
    assert all(beat.at is None for beat in dashboard_health())


def test_health_reads_each_process_from_what_it_writes_and_flags_a_late_beat(db):
    now = timezone.now()
    every = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name=CHECK_TRIGGERS, task="retraining.check_triggers", interval=every, last_run_at=now - timedelta(hours=1)
    )
    evaluation = TriggerEvaluation.objects.create(clock=now)
    health = {beat.process: beat for beat in dashboard_health()}
    assert health["worker"].at == evaluation.created_at and not health["worker"].late(now=now)
    assert health["beat"].late(now=now)  # an hour without a sync, for a task due every minute
    assert health["web"].at is None and health["trainer"].at is None


def test_staff_without_the_permission_to_see_versions_get_a_403(client, django_user_model):
    staff = django_user_model.objects.create_user("viewer", password="pw-for-tests", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/dashboard/").status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_modelversion"))
    assert client.get("/admin/dashboard/").status_code == 200


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    answer = client.get("/admin/dashboard/")
    assert answer.status_code == 302 and "/admin/login/" in answer["Location"]


def test_shadow_lists_do_not_count_in_the_online_chart(history):
    Impression.objects.filter(routed_version=history.v3.version).update(arm="shadow")
    ImpressionOutcome.objects.filter(routed_version=history.v3.version).update(arm="shadow")  # recorded as such
    labels = {d["label"] for d in dashboard_charts(now=history.now)["online"]["data"]["datasets"]}
    assert labels == {"v1 CTR", "v1 hit rate@10"}


def test_the_trainer_is_late_only_when_its_claimed_run_stops_beating(db):
    now = timezone.now()
    TrainingRun.objects.create(
        trigger="manual", status="promoted", in_flight=None, heartbeat_at=now - timedelta(days=1)
    )
    queued = TrainingRun.objects.create(trigger="manual")
    trainer = {beat.process: beat for beat in dashboard_health()}["trainer"]
    assert not trainer.late(now=now) and trainer.detail == f"run {queued.pk} is queued"
    TrainingRun.objects.filter(pk=queued.pk).update(status="training", heartbeat_at=now - timedelta(minutes=5))
    trainer = {beat.process: beat for beat in dashboard_health()}["trainer"]
    assert trainer.late(now=now)  # five minutes of silence against a 60 s lease


def test_during_a_replay_each_heartbeat_is_aged_by_the_clock_that_stamped_it(staff_client, db, replay_clock):
    """A replay runs the system clock ahead: lists carry that clock, trigger checks the real one."""
    now = timezone.now()
    clock_set(simulated_now=now + timedelta(days=400), speed=1.0)
    TriggerEvaluation.objects.create(clock=now)
    serve(user("replayed"), [], now + timedelta(days=400) - timedelta(hours=2), version=1)
    rows = staff_client.get("/admin/dashboard/").content.decode().split('<table class="dash-health">')[1]
    web, worker = rows.split("<td>web</td>")[1], rows.split("<td>worker</td>")[1]
    assert web.split("</td>")[0].endswith("2\xa0hours ago</span>")
    assert worker.split("</td>")[0].endswith("0\xa0minutes ago</span>")
