"""Popularity that one client cannot buy: the cold-start list counts distinct users, and an item that exists
only because an event named it is not served until the catalogue defines it."""

import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from recommendations import features
from recommendations.models import EndUser, Interaction, Item, ItemFeatures
from recommendations.services.catalog import ItemInput, item_upsert
from recommendations.services.events import EventInput, event_ingest
from recommendations.services.online_features import item_state_from_row, online_features_rebuild
from retraining.ml.candidates import collaborative_fit
from tests.recommendations.test_online_features import assert_online_equals_replay
from tests.retraining.factories import DAY, START, RawEvent, dataset_with_events, event_log_from, learnable_dataset

pytestmark = pytest.mark.django_db

EVENTS, RECOMMENDATIONS = "/api/v1/events", "/api/v1/users/{}/recommendations"


@pytest.fixture(autouse=True)
def isolated_serving(settings):
    settings.MODEL_POLL_SECONDS = 0


@pytest.fixture
def catalogue():
    item_upsert(items=[ItemInput(item_id=f"i{n}", title=f"Item {n}", categories=["drama"]) for n in range(6)])


def view(user: str, item: str, minutes_ago: float = 60) -> dict:
    moment = timezone.now() - timedelta(minutes=minutes_ago)
    return {"user_id": user, "item_id": item, "event_type": "view", "timestamp": moment.isoformat()}


def post_events(client, events: list[dict]) -> None:
    response = client.post(EVENTS, {"events": events}, format="json")
    assert response.status_code == 201, response.content


def cold_start_list(client, k: int = 10) -> list[dict]:
    body = client.get(RECOMMENDATIONS.format("someone-new"), {"k": k}).json()
    assert body["strategy"] == "popular"
    return body["items"]


def distinct_users(external_id: str) -> int:
    return ItemFeatures.objects.get(item__external_id=external_id).user_count


def test_a_thousand_views_by_one_user_do_not_lead_the_cold_start_list_over_an_item_with_more_users(
    catalogue, ingest_client, serve_client
):
    post_events(ingest_client, [view(f"fan-{n}", "i1") for n in range(5)])
    post_events(ingest_client, [view("fan-0", "i2")] * 2)
    post_events(ingest_client, [view("bot", "i3", minutes_ago=60 - n / 100) for n in range(1000)])
    served = cold_start_list(serve_client)
    assert [item["item_id"] for item in served[:3]] == ["i1", "i3", "i2"]
    assert served[0]["score"] == pytest.approx(5.0, rel=0.01) and served[1]["score"] == pytest.approx(1.0, rel=0.01)
    assert (distinct_users("i3"), ItemFeatures.objects.get(item__external_id="i3").event_count) == (1, 1000)


def test_a_user_repeating_events_over_many_batches_is_counted_once(catalogue):
    for batch in range(5):
        event_ingest(events=[EventInput("bot", "i1", "like", timezone.now() - timedelta(hours=batch))] * 20)
    event_ingest(events=[EventInput("other", "i1", "view", timezone.now())])
    assert distinct_users("i1") == 2
    assert_online_equals_replay()


def test_a_rebuild_counts_the_same_distinct_users_as_ingestion(catalogue):
    for n in range(30):
        event_ingest(events=[EventInput(f"u{n % 4}", f"i{n % 3}", "view", timezone.now() - timedelta(hours=n))] * 2)
    live = {row.item_id: item_state_from_row(row) for row in ItemFeatures.objects.all()}
    ItemFeatures.objects.update(user_count=0, log_users_7d=None)
    online_features_rebuild()
    for row in ItemFeatures.objects.filter(item_id__in=live):
        rebuilt = item_state_from_row(row)
        assert rebuilt.user_count == live[row.item_id].user_count == 4
        assert rebuilt.log_users_7d == pytest.approx(live[row.item_id].log_users_7d, rel=1e-12)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_concurrent_batches_of_one_user_on_one_item_count_the_user_once():
    """Each round, two threads ingest the same user's first events on a new item at the same moment: only one
    may count as the user's first with the item."""
    rounds = 25
    Item.objects.bulk_create([Item(external_id=f"hot-{n}") for n in range(rounds)])
    start, errors = threading.Barrier(2), []

    def ingest(worker: int):
        try:
            for n in range(rounds):
                start.wait(timeout=30)
                moment = timezone.now() - timedelta(minutes=worker)
                event_ingest(events=[EventInput("same-user", f"hot-{n}", "view", moment)] * 3)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Interaction.objects.count() == rounds * 6
    assert list(ItemFeatures.objects.values_list("user_count", flat=True).distinct()) == [1]
    assert_online_equals_replay()


def test_an_item_named_only_by_an_event_is_not_served_until_the_catalogue_defines_it(
    catalogue, ingest_client, serve_client
):
    fans = [view(f"fan-{n}", "undefined") for n in range(10)]
    post_events(ingest_client, [*fans, view("fan-0", "i1"), view("fan-1", "i2")])
    stored = Item.objects.get(external_id="undefined")
    assert not stored.active and distinct_users("undefined") == 10  # kept: no acknowledged event is lost
    assert "undefined" not in {item["item_id"] for item in cold_start_list(serve_client)}
    similar = serve_client.get("/api/v1/items/i1/similar", {"k": 10}).json()["items"]
    assert similar and "undefined" not in {item["item_id"] for item in similar}
    assert (
        ingest_client.put(
            "/api/v1/items/undefined", {"title": "Now defined", "categories": ["drama"]}, format="json"
        ).status_code
        == 200
    )
    assert cold_start_list(serve_client)[0]["item_id"] == "undefined"
    assert serve_client.get("/api/v1/items/i1/similar", {"k": 10}).json()["items"][0]["item_id"] == "undefined"


@override_settings(CATALOG_STRICT=True)
def test_a_strict_catalogue_refuses_the_event_and_creates_nothing(catalogue, ingest_client):
    response = ingest_client.post(EVENTS, {"events": [view("u1", "i1"), view("u1", "undefined")]}, format="json")
    assert response.status_code == 400 and response.json()["error"] == "unknown_item"
    assert not Item.objects.filter(external_id="undefined").exists()
    assert not (Interaction.objects.exists() or EndUser.objects.exists())


def test_items_imported_from_movielens_or_generated_are_defined_and_served(serve_client, tmp_path):
    from recommendations.services.movielens import movielens_import
    from recommendations.services.synthetic import synthetic_dataset_write

    synthetic_dataset_write(output=tmp_path / "synthetic", users=30, items=40, events=400, drift_at=0.8, seed=1)
    movielens_import(path=tmp_path / "synthetic", progress=False)
    assert not Item.objects.filter(active=False).exists()
    assert len(cold_start_list(serve_client, k=10)) == 10


@pytest.mark.parametrize("layout", ["movielens-100k-mini", "movielens-1m-mini", "movielens-csv-mini"])
def test_a_movie_that_only_ratings_name_is_imported_inactive(layout):
    from recommendations.services.movielens import movielens_import

    movielens_import(path=Path(__file__).resolve().parent.parent / "fixtures" / layout, progress=False)
    inactive = Item.objects.filter(active=False).values_list("external_id", flat=True)
    assert list(inactive) == ["11"] and Item.objects.filter(active=True).count() == 10  # the movies file lists 1-10


def test_the_distinct_user_popularity_decays_from_each_users_first_event():
    state = features.ItemState()
    at = features.EPOCH + 100 * features.DAY
    first = features.Event(1, 7, "view", None, at - 7 * features.DAY)
    features.item_apply(state, first, first_of_user=True)
    features.item_apply(state, first._replace(ts=at), first_of_user=False)
    features.item_apply(state, features.Event(2, 7, "view", None, at), first_of_user=True)
    assert state.user_count == 2 and state.event_count == 3
    assert features.decayed_count(state.log_users_7d, at, 7.0) == pytest.approx(1.5)


def test_repeating_an_event_does_not_move_an_item_up_the_trained_popularity():
    """The most-popular baseline and the ranker's popularity candidates come from the trained model's
    popularity: one user's 1,000 likes weigh what one like weighs."""
    base = learnable_dataset(users=30, items=20, per_user=8)
    like = RawEvent(user=0, item=19, event_type="like", value=None, ts=START + 130 * DAY)

    def popularity(repeats: int) -> np.ndarray:
        log = event_log_from(dataset_with_events(base, base.events + [like] * repeats))
        return collaborative_fit(log=log, mask=np.ones(len(log), bool), n_modelled=20, l2=10.0).popularity

    once, bought = popularity(1), popularity(1000)
    np.testing.assert_array_equal(bought, once)
    assert np.argmax(bought) != 19


def test_the_migration_backfills_the_distinct_users_that_ingestion_counts(catalogue):
    import importlib

    from django.apps import apps

    for n in range(40):
        event_ingest(events=[EventInput(f"u{n % 6}", f"i{n % 4}", "view", timezone.now() - timedelta(hours=n))] * 3)
    live = sorted(ItemFeatures.objects.values_list("item_id", "user_count", "log_users_7d"))
    ItemFeatures.objects.update(user_count=0, log_users_7d=None)
    migration = importlib.import_module("recommendations.migrations.0006_distinct_user_popularity")
    migration.distinct_users_backfill(apps, None)
    backfilled = sorted(ItemFeatures.objects.values_list("item_id", "user_count", "log_users_7d"))
    assert [row[:2] for row in backfilled] == [row[:2] for row in live] and live[0][1] == 3
    assert [row[2] for row in backfilled] == pytest.approx([row[2] for row in live], rel=1e-12)
