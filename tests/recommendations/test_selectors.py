import pytest

from recommendations.models import EndUser, Interaction, Item, UserFeatures
from recommendations.selectors import inactive_items, served_user
from recommendations.services.online_features import online_features_rebuild
from tests.retraining.factories import dataset_store, learnable_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def history():
    dataset_store(learnable_dataset(users=10, items=20, per_user=6))
    online_features_rebuild()


def test_a_served_user_has_the_online_features_and_every_item_of_their_events(history):
    for row in UserFeatures.objects.select_related("user"):
        user = served_user(external_id=row.user.external_id)
        assert user.pk == row.user_id and user.state == row.state()
        assert user.seen == set(Interaction.objects.filter(user_id=row.user_id).values_list("item_id", flat=True))


def test_a_user_without_events_has_empty_features_and_an_unknown_user_is_none(history):
    newcomer = EndUser.objects.create(external_id="newcomer")
    user = served_user(external_id="newcomer")
    assert user.pk == newcomer.pk and user.state.event_count == 0 and user.seen == set()
    assert served_user(external_id="nobody") is None


def test_inactive_items_names_only_the_inactive_ones(history):
    first, second = Item.objects.order_by("pk")[:2]
    Item.objects.filter(pk=second.pk).update(active=False)
    assert inactive_items(pks=[first.pk, second.pk]) == {second.pk}
    assert inactive_items(pks=[]) == set()


def test_the_user_statement_is_prepared_once_per_connection_on_postgresql(history):
    from django.db import connection

    from recommendations import sql as selectors

    if connection.vendor != "postgresql":
        pytest.skip("prepared once per connection on PostgreSQL only")
    external_id = EndUser.objects.order_by("pk").first().external_id
    expected = served_user(external_id=external_id)
    statements = []
    with connection.execute_wrapper(lambda execute, sql, *args: statements.append(sql) or execute(sql, *args)):
        assert served_user(external_id=external_id) == expected
        assert served_user(external_id="nobody") is None
    assert [sql.split()[0] for sql in statements] == ["EXECUTE", "EXECUTE"], "prepared by the first call already"
    with connection.cursor() as cursor:  # as for a new connection
        cursor.execute(f"DEALLOCATE {selectors._PREPARED_NAME}")
    delattr(connection, selectors._PREPARED_ON)
    with connection.execute_wrapper(lambda execute, sql, *args: statements.append(sql) or execute(sql, *args)):
        assert served_user(external_id=external_id) == expected
    assert [sql.split()[0] for sql in statements[2:]] == ["PREPARE", "EXECUTE"]
