"""Each web process caches user and item ids for ingestion (INGEST_CACHE_SECONDS): nothing the database does not
hold is ever remembered, and the fold reads items' categories afresh."""

import time
from datetime import UTC, datetime

import pytest
from django.db import transaction

from recommendations.models import EndUser, Interaction, Item, UserFeatures
from recommendations.services.events import EventInput, event_ingest
from recsite.errors import ApplicationError

pytestmark = pytest.mark.django_db

AT = datetime(2024, 5, 1, tzinfo=UTC)


def view(user_id, item_id="i1"):
    return EventInput(user_id=user_id, item_id=item_id, event_type="view", timestamp=AT)


def categories_counted_for(user_id):
    return UserFeatures.objects.get(user__external_id=user_id).category_counts


def ingest_and_commit(events, capture):
    with capture(execute=True):
        return event_ingest(events=events)


def test_a_category_change_reaches_the_next_fold_even_within_the_cache_time(
    settings, django_capture_on_commit_callbacks
):
    """The fold reads the categories of the items it folds (services.online_features): the ids' cache does not
    delay a category change."""
    settings.INGEST_CACHE_SECONDS = 60
    Item.objects.create(external_id="i1", categories=["Drama"])
    ingest_and_commit([view("u1")], django_capture_on_commit_callbacks)
    Item.objects.filter(external_id="i1").update(categories=["War"])
    ingest_and_commit([view("u2")], django_capture_on_commit_callbacks)
    assert categories_counted_for("u1") == {"Drama": 1} and categories_counted_for("u2") == {"War": 1}


def test_a_category_change_reaches_new_events_once_the_cache_time_has_passed(
    settings, django_capture_on_commit_callbacks
):
    settings.INGEST_CACHE_SECONDS = 0.3
    Item.objects.create(external_id="i1", categories=["Drama"])
    ingest_and_commit([view("u1")], django_capture_on_commit_callbacks)
    Item.objects.filter(external_id="i1").update(categories=["War"])
    time.sleep(0.35)
    ingest_and_commit([view("u2")], django_capture_on_commit_callbacks)
    assert categories_counted_for("u2") == {"War": 1}


def test_an_item_created_by_an_ingest_that_rolled_back_stays_unknown_to_a_strict_catalog(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        event_ingest(events=[view("u1", item_id="phantom")], catalog_strict=False)
        raise RuntimeError("the caller's transaction fails after the ingest")
    with pytest.raises(ApplicationError, match="unknown items"):
        event_ingest(events=[view("u1", item_id="phantom")], catalog_strict=True)


def test_an_unknown_item_is_read_again_rather_than_remembered_as_unknown(django_capture_on_commit_callbacks):
    with pytest.raises(ApplicationError):
        event_ingest(events=[view("u1", item_id="later")], catalog_strict=True)
    Item.objects.create(external_id="later")
    assert ingest_and_commit([view("u1", item_id="later")], django_capture_on_commit_callbacks).accepted == 1


def test_a_deactivated_item_still_accepts_events(settings, django_capture_on_commit_callbacks):
    settings.INGEST_CACHE_SECONDS = 60
    Item.objects.create(external_id="i1", active=False)
    assert ingest_and_commit([view("u1")], django_capture_on_commit_callbacks).accepted == 1
    assert ingest_and_commit([view("u2")], django_capture_on_commit_callbacks).accepted == 1


@pytest.mark.django_db(transaction=True)
def test_an_item_deleted_while_cached_is_created_again_by_its_next_event(settings):
    settings.INGEST_CACHE_SECONDS = 60
    event_ingest(events=[view("u1", item_id="gone")])
    Interaction.objects.all().delete()
    Item.objects.filter(external_id="gone").delete()
    assert event_ingest(events=[view("u2", item_id="gone")]).accepted == 1
    assert Interaction.objects.get().item.external_id == "gone"


def test_a_user_created_by_an_ingest_that_rolled_back_is_created_again_by_their_next_event(
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        event_ingest(events=[view("ghost")])
        raise RuntimeError("the caller's transaction fails after the ingest")
    ingest_and_commit([view("ghost")], django_capture_on_commit_callbacks)
    assert Interaction.objects.get().user == EndUser.objects.get(external_id="ghost")


@pytest.mark.django_db(transaction=True)
def test_a_user_deleted_while_cached_is_created_again_by_their_next_event(settings):
    settings.INGEST_CACHE_SECONDS = 60
    event_ingest(events=[view("gone")])
    Interaction.objects.all().delete()
    EndUser.objects.filter(external_id="gone").delete()
    assert event_ingest(events=[view("gone")]).accepted == 1
    assert Interaction.objects.get().user.external_id == "gone"
    assert UserFeatures.objects.get().event_count == 1
