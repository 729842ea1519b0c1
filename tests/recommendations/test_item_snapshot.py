import numpy as np
import pytest
from django.db.models import F

from recommendations import features, item_snapshot
from recommendations.models import Item, ItemFeatures
from recommendations.services.online_features import item_state_from_row, online_features_rebuild
from recommendations.serving.holders import ItemSnapshotHolder
from tests.retraining.factories import dataset_store, learnable_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalogue():
    dataset_store(learnable_dataset(users=20, items=30, per_user=8))
    online_features_rebuild()
    Item.objects.create(external_id="no-events-yet", categories=["genre-1"])


def test_the_snapshot_holds_every_item_with_its_online_feature_row(catalogue):
    snapshot = item_snapshot.item_snapshot_build()
    assert snapshot.pks.tolist() == sorted(Item.objects.values_list("pk", flat=True))
    for row in ItemFeatures.objects.all():
        position = snapshot.rows_of(np.array([row.item_id]))[0]
        expected = features.item_state_row(item_state_from_row(row))
        np.testing.assert_array_equal(snapshot.columns[position], np.array(expected))
    fresh = snapshot.rows_of(np.array([Item.objects.get(external_id="no-events-yet").pk]))
    np.testing.assert_array_equal(snapshot.columns[fresh[0]], features.item_state_row(features.ItemState()))
    assert snapshot.in_category(fresh, "genre-1").all()


def test_a_rebuild_reuses_the_category_matrix_only_while_every_items_categories_read_the_same(catalogue):
    first = item_snapshot.item_snapshot_build()
    again = item_snapshot.item_snapshot_build(previous=first)
    assert again.categories is first.categories and again.category_names is first.category_names
    Item.objects.filter(external_id="no-events-yet").update(categories=["genre-new"])
    changed = item_snapshot.item_snapshot_build(previous=again)
    row = changed.rows_of(np.array([Item.objects.get(external_id="no-events-yet").pk]))
    assert changed.in_category(row, "genre-new").all() and not changed.in_category(row, "genre-1").any()


def test_an_item_created_after_the_snapshot_is_not_servable_from_it(catalogue):
    snapshot = item_snapshot.item_snapshot_build()
    late = Item.objects.create(external_id="late")
    assert snapshot.rows_of(np.array([late.pk])).tolist() == [-1]
    assert not snapshot.servable(snapshot.rows_of(np.array([late.pk]))).any()


def test_the_trending_order_is_decayed_distinct_users_then_users_then_events_and_only_active_items(catalogue):
    Item.objects.filter(pk=Item.objects.order_by("pk").first().pk).update(active=False)
    snapshot = item_snapshot.item_snapshot_build()
    expected = ItemFeatures.objects.filter(item__active=True).order_by(
        F("log_users_7d").desc(nulls_last=True), "-user_count", "-event_count", "item_id"
    )
    assert snapshot.pks[snapshot.trending].tolist() == list(expected.values_list("item_id", flat=True))


def test_a_failed_rebuild_keeps_the_previous_snapshot(catalogue, monkeypatch):
    holder = ItemSnapshotHolder()
    before = holder.current()

    def broken():
        raise RuntimeError("database unreachable")

    monkeypatch.setattr("recommendations.serving.holders.item_snapshot_build", broken)
    holder.refresh()
    assert holder.current() is before
