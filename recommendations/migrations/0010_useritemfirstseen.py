import django.db.models.deletion
from django.db import migrations, models


def first_seen_backfill(apps, schema_editor):
    """Each (user, item) pair of the event log at its first (lowest key) event, as ingestion counted it so far."""
    Interaction = apps.get_model("recommendations", "Interaction")
    UserItemFirstSeen = apps.get_model("recommendations", "UserItemFirstSeen")
    events, first = Interaction._meta.db_table, UserItemFirstSeen._meta.db_table
    schema_editor.execute(
        f"INSERT INTO {first} (user_id, item_id, first_event, first_seen) "
        f"SELECT e.user_id, e.item_id, e.id, e.timestamp FROM {events} e "
        f"WHERE e.id IN (SELECT min(id) FROM {events} GROUP BY user_id, item_id)"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("recommendations", "0009_pending_fold"),
    ]

    operations = [
        migrations.CreateModel(
            name="UserItemFirstSeen",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("first_event", models.BigIntegerField(help_text="Interaction key of the pair's first event.")),
                ("first_seen", models.DateTimeField()),
                (
                    "item",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="recommendations.item"
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="recommendations.enduser",
                    ),
                ),
            ],
            options={
                "verbose_name": "user-item first seen",
                "verbose_name_plural": "user-item first seen",
                "constraints": [models.UniqueConstraint(fields=("user", "item"), name="uniq_first_seen_user_item")],
            },
        ),
        migrations.RunPython(first_seen_backfill, migrations.RunPython.noop),
    ]
