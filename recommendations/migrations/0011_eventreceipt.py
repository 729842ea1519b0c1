from django.db import migrations, models


def receipts_backfill(apps, schema_editor):
    """A receipt for each stored event id, so that a retry of an event stored before this migration stays a
    duplicate."""
    Interaction = apps.get_model("recommendations", "Interaction")
    EventReceipt = apps.get_model("recommendations", "EventReceipt")
    schema_editor.execute(
        f"INSERT INTO {EventReceipt._meta.db_table} (event_id, received_at) SELECT event_id, min(received_at) "
        f"FROM {Interaction._meta.db_table} WHERE event_id IS NOT NULL GROUP BY event_id"
    )


class Migration(migrations.Migration):
    """Idempotency by event id moves from a unique constraint on the events (which a table partitioned by time
    cannot have without the time) to a table of its own."""

    dependencies = [
        ("recommendations", "0010_useritemfirstseen"),
    ]

    operations = [
        migrations.CreateModel(
            name="EventReceipt",
            fields=[
                ("event_id", models.UUIDField(primary_key=True, serialize=False)),
                ("received_at", models.DateTimeField(db_index=True)),
            ],
        ),
        migrations.RunPython(receipts_backfill, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name="interaction", name="uniq_event_id"),
    ]
