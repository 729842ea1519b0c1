"""The recommendations admin reads cleanly: one "API keys" entry with scopes as checkboxes, "Item features" and
"User features", read-only pages without a Save button."""

import pytest

from recommendations.models import ApiKey, EndUser, UserFeatures

pytestmark = pytest.mark.django_db


def test_the_admin_index_lists_one_api_keys_entry_and_features_spelled_right(staff_client):
    html = staff_client.get("/admin/").content.decode()
    assert html.count(">API keys<") == 1
    assert "Item features<" in html and "User features<" in html and "featuress" not in html


def test_api_key_scopes_are_checkboxes_and_saved_as_a_list(staff_client):
    form = staff_client.get("/admin/recommendations/apikey/add/").content.decode()
    assert 'type="checkbox" name="scopes" value="serve"' in form and "<textarea" not in form
    response = staff_client.post("/admin/recommendations/apikey/add/", {"name": "shop", "scopes": ["ingest", "serve"]})
    assert response.status_code == 302
    assert ApiKey.objects.get(name="shop").scopes == ["ingest", "serve"]


def test_a_users_features_page_is_read_only_and_named(staff_client):
    features = UserFeatures.objects.create(user=EndUser.objects.create(external_id="u1"))
    html = staff_client.get(f"/admin/recommendations/userfeatures/{features.pk}/change/").content.decode()
    assert "features of user" in html and 'name="_save"' not in html and "UserFeatures object" not in html


def test_a_users_json_features_are_definition_lists(staff_client):
    features = UserFeatures.objects.create(
        user=EndUser.objects.create(external_id="u2"), category_counts={"drama": 3}, recent_items=[4, 5]
    )
    html = staff_client.get(f"/admin/recommendations/userfeatures/{features.pk}/change/").content.decode()
    assert "<dt>drama</dt><dd>3</dd>" in html and "4, 5" in html and '{"drama"' not in html
