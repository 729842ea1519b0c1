from collections import defaultdict

from django.db import migrations, models

from recommendations import features


def distinct_users_backfill(apps, schema_editor):
    """Each item's distinct users from the event log, as ingestion counts them from now on: each (user, item)
    pair once, at its first (lowest key) event (features.ItemState)."""
    Interaction = apps.get_model("recommendations", "Interaction")
    ItemFeatures = apps.get_model("recommendations", "ItemFeatures")
    seen: set[tuple[int, int]] = set()
    states: dict[int, features.ItemState] = defaultdict(features.ItemState)
    events = Interaction.objects.order_by("pk").values_list("user_id", "item_id", "event_type", "value", "timestamp")
    for user_id, item_id, event_type, value, timestamp in events.iterator(chunk_size=20000):
        if (user_id, item_id) not in seen:
            seen.add((user_id, item_id))
            arrival = features.Event(user_id, item_id, event_type, value, timestamp.timestamp())
            features.item_merge(states[item_id], features.item_delta((), [arrival]))
    rows = [
        ItemFeatures(item_id=item_id, user_count=state.user_count, log_users_7d=state.log_users_7d)
        for item_id, state in states.items()
    ]
    ItemFeatures.objects.bulk_update(rows, ["user_count", "log_users_7d"], batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("recommendations", "0005_catalog_state"),
    ]

    operations = [
        migrations.AddField(
            model_name="itemfeatures",
            name="log_users_7d",
            field=models.FloatField(help_text="distinct users, decayed from each one's first event", null=True),
        ),
        migrations.AddField(
            model_name="itemfeatures",
            name="user_count",
            field=models.IntegerField(default=0, help_text="distinct users with an event on the item"),
        ),
        migrations.AddIndex(
            model_name="interaction",
            index=models.Index(fields=["user", "item"], name="ix_interaction_user_item"),
        ),
        migrations.RunPython(distinct_users_backfill, migrations.RunPython.noop),
    ]
