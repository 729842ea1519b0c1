import pytest

from recommendations.models import Item

pytestmark = pytest.mark.django_db


def test_put_creates_an_item_with_all_fields(ingest_client):
    body = {"title": "Heat (1995)", "categories": ["Action", "Crime"], "attributes": {"year": 1995}, "active": True}
    response = ingest_client.put("/api/v1/items/6", body, format="json")
    assert response.status_code == 201
    assert response.json() == {"created": 1, "updated": 0}
    item = Item.objects.get(external_id="6")
    assert (item.title, item.categories, item.attributes, item.active) == (
        "Heat (1995)",
        ["Action", "Crime"],
        {"year": 1995},
        True,
    )


def test_put_replaces_an_existing_item(ingest_client):
    Item.objects.create(external_id="6", title="old", categories=["Drama"])
    response = ingest_client.put("/api/v1/items/6", {"title": "new", "active": False}, format="json")
    assert response.status_code == 200
    assert response.json() == {"created": 0, "updated": 1}
    item = Item.objects.get(external_id="6")
    assert (item.title, item.categories, item.active) == ("new", [], False)


def test_bulk_upsert_creates_and_updates_in_one_request(ingest_client):
    Item.objects.create(external_id="a", title="old")
    body = {"items": [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": "B", "categories": ["Comedy"]}]}
    response = ingest_client.post("/api/v1/items", body, format="json")
    assert response.status_code == 200
    assert response.json() == {"created": 1, "updated": 1}
    assert dict(Item.objects.values_list("external_id", "title")) == {"a": "A", "b": "B"}


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"categories": "Comedy"}, "categories"),
        ({"categories": [1]}, "categories[0]"),
        ({"attributes": [1]}, "attributes"),
        ({"active": "yes"}, "active"),
        ({"title": 5}, "title"),
        ({"color": "red"}, "color"),
    ],
)
def test_a_bad_item_in_a_batch_gets_a_400_and_nothing_is_written(ingest_client, bad, field):
    body = {"items": [{"item_id": "ok"}, {"item_id": "bad", **bad}]}
    response = ingest_client.post("/api/v1/items", body, format="json")
    assert response.status_code == 400
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(1, field)]
    assert not Item.objects.exists()


def test_a_bad_category_is_located_by_its_position_with_a_readable_message(ingest_client):
    response = ingest_client.put("/api/v1/items/6", {"categories": ["Drama", 7]}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"index": None, "field": "categories[1]", "message": "Not a valid string."}]


@pytest.mark.parametrize("raw", ["[]", '{"item_id": "x"}', '{"items": []}', '{"items": [{"title": "no id"}]}', "nope"])
def test_malformed_bulk_bodies_get_a_400(ingest_client, raw):
    assert ingest_client.post("/api/v1/items", raw, content_type="application/json").status_code == 400
    assert not Item.objects.exists()


def test_put_refuses_an_item_id_in_the_body(ingest_client):
    response = ingest_client.put("/api/v1/items/6", {"item_id": "7"}, format="json")
    assert response.status_code == 400
    assert not Item.objects.exists()
