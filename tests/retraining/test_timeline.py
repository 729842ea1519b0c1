from datetime import timedelta

import pytest
from django.utils import timezone

from recommendations.models import Impression
from registry.services import model_version_promote
from tests.recommendations.factories import serve, user
from tests.retraining.dashboard_factories import dashboard_history

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(tmp_path, settings):
    settings.MODEL_STORE = tmp_path / "store"
    return dashboard_history(tmp_path, now=timezone.now())


def test_the_timeline_lists_each_served_list_newest_first_with_version_arm_and_experiment(admin_client_api, history):
    answer = admin_client_api.get("/api/v1/users/user-1/timeline")
    assert answer.status_code == 200
    body = answer.json()
    assert body["user_id"] == "user-1" and body["total"] == 3 and body["next_offset"] is None
    newest, middle, oldest = body["lists"]
    assert newest["served_at"] > middle["served_at"] > oldest["served_at"]
    assert (newest["model_version"], newest["arm"], newest["experiment_id"]) == (3, "challenger", history.experiment_id)
    assert (oldest["model_version"], oldest["arm"], oldest["experiment_id"]) == (1, "champion", None)
    assert newest["strategy"] == "model" and newest["items"][0] == "item-1"


def test_each_list_names_the_deployment_change_that_made_its_version_current_with_the_gate(admin_client_api, history):
    newest, _, oldest = admin_client_api.get("/api/v1/users/user-1/timeline").json()["lists"]
    champion = oldest["deployment"]
    assert (champion["action"], champion["alias"], champion["actor"], champion["reason"]) == (
        "promote",
        "champion",
        "admin:ops",
        "first model",
    )
    assert champion["gate"] == {
        "passed": True,
        "reasons": ["NDCG@10 0.12 against None"],
        "ndcg_at_10": {"candidate": 0.12, "champion": None, "popularity": 0.05},
    }
    challenger = newest["deployment"]
    assert (challenger["action"], challenger["alias"], challenger["version"]) == ("challenger_start", "challenger", 3)
    assert challenger["gate"]["ndcg_at_10"] == {"candidate": 0.14, "champion": 0.12, "popularity": 0.05}


def test_a_list_served_before_its_version_became_current_has_no_deployment_change(admin_client_api, history):
    """v1 was promoted three days ago (backdated); a list it served four days ago predates that change."""
    serve(user("early"), [], history.now - timedelta(days=4), version=1)
    (early,) = admin_client_api.get("/api/v1/users/early/timeline").json()["lists"]
    assert early["deployment"] is None and early["events"] == []


def test_a_later_promotion_does_not_explain_an_earlier_list(admin_client_api, history):
    model_version_promote(version=history.v3.version, actor="admin:ops", reason="after the A/B test")
    model_version_promote(version=history.v1.version, actor="admin:ops", reason="back again")  # now, after the lists
    _, _, oldest = admin_client_api.get("/api/v1/users/user-1/timeline").json()["lists"]
    assert oldest["deployment"]["reason"] == "first model"


def test_the_events_sent_back_with_a_lists_recommendation_id_are_attributed_to_it(admin_client_api, history):
    lists = admin_client_api.get("/api/v1/users/user-0/timeline").json()["lists"]
    assert [[(e["event_type"], e["item_id"]) for e in entry["events"]] for entry in lists] == [
        [("click", "item-0")]
    ] * 3
    odd = admin_client_api.get("/api/v1/users/user-1/timeline").json()["lists"]
    assert [len(entry["events"]) for entry in odd] == [1, 0, 0]


def test_the_timeline_is_paginated_and_bounded(admin_client_api, history):
    first = admin_client_api.get("/api/v1/users/user-1/timeline?limit=2").json()
    rest = admin_client_api.get(f"/api/v1/users/user-1/timeline?limit=2&offset={first['next_offset']}").json()
    assert len(first["lists"]) == 2 and first["next_offset"] == 2 and len(rest["lists"]) == 1
    assert rest["next_offset"] is None
    ids = [e["recommendation_id"] for e in first["lists"] + rest["lists"]]
    assert len(set(ids)) == 3 == Impression.objects.filter(user__external_id="user-1").count()


@pytest.mark.parametrize(
    "query, field", [("limit=0", "limit"), ("limit=101", "limit"), ("offset=-1", "offset"), ("limit=ten", "limit")]
)
def test_a_bad_limit_or_offset_is_a_400_naming_the_field(admin_client_api, history, query, field):
    answer = admin_client_api.get(f"/api/v1/users/user-1/timeline?{query}")
    assert answer.status_code == 400
    assert [error["field"] for error in answer.json()["errors"]] == [field]


def test_an_unknown_user_is_a_json_404(admin_client_api, db):
    answer = admin_client_api.get("/api/v1/users/nobody/timeline")
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    assert "nobody" in answer.json()["message"]


def test_the_timeline_needs_an_admin_key(serve_client, api_client, db):
    assert api_client.get("/api/v1/users/u/timeline").status_code == 401
    assert serve_client.get("/api/v1/users/u/timeline").status_code == 403


def test_the_admin_page_shows_the_lists_the_change_and_the_events(staff_client, history):
    page = staff_client.get("/admin/dashboard/timeline/?user=user-1")
    html = page.content.decode()
    assert page.status_code == 200
    assert "3 lists served to <strong>user-1</strong>" in html
    assert "challenger_start of v3 by gate" in html and "promote of v1 by admin:ops" in html
    assert "NDCG@10 candidate 0.1400, champion 0.1200, most-popular 0.0500" in html
    assert "click item-1" in html and f"experiment {history.experiment_id}" in html


def test_the_admin_page_says_plainly_when_the_user_does_not_exist(staff_client, db):
    page = staff_client.get("/admin/dashboard/timeline/?user=nobody")
    assert page.status_code == 404 and "User &#x27;nobody&#x27; does not exist." in page.content.decode()


def test_the_admin_page_pages_through_a_long_history(staff_client, history):
    who = user("busy")
    for n in range(60):
        serve(who, [], history.now - timedelta(minutes=n), version=1)
    first = staff_client.get("/admin/dashboard/timeline/?user=busy").content.decode()
    second = staff_client.get("/admin/dashboard/timeline/?user=busy&page=2").content.decode()
    assert "50 shown from number 1" in first and "page=2" in first
    assert "10 shown from number 51" in second and "page=3" not in second


@pytest.mark.parametrize("query", ["user=%00", "user=a%00b", f"user={'x' * 500}", "user=u&page=0", "user=u&page=x"])
def test_no_user_id_or_page_number_makes_the_admin_page_fail(staff_client, db, query):
    page = staff_client.get(f"/admin/dashboard/timeline/?{query}")
    assert page.status_code == 404 and b"does not exist" in page.content
