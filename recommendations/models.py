import copy
import json
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime

from django.db import models
from django.db.models import Q
from rest_framework_api_key.models import AbstractAPIKey

from recommendations import features


class EventType(models.TextChoices):
    VIEW = "view"
    CLICK = "click"
    LIKE = "like"
    RATING = "rating"
    PURCHASE = "purchase"
    DISLIKE = "dislike"


class Item(models.Model):
    external_id = models.CharField(max_length=128, unique=True)
    title = models.CharField(max_length=500, blank=True, default="")
    categories = models.JSONField(default=list, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.external_id} {self.title}".strip()


class EndUser(models.Model):
    """A user of the client application, known by the application's own id and created on first event."""

    external_id = models.CharField(max_length=128, unique=True)
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.external_id


class Interaction(models.Model):
    """One event, append-only: rows are inserted and never updated.

    On PostgreSQL the table is range-partitioned by month on `timestamp` (migration 0011; partitions created ahead
    and dropped past the retention horizon by recommendations.services.partitions), so its database primary key is
    (id, timestamp): `id` alone stays unique (one sequence) and is Django's pk, and no foreign key may point here.
    A unique constraint would have to include `timestamp`, so idempotency by `event_id` lives in EventReceipt."""

    event_id = models.UUIDField(null=True, blank=True)
    user = models.ForeignKey(EndUser, on_delete=models.PROTECT, related_name="interactions")
    item = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="interactions")
    event_type = models.CharField(max_length=16, choices=EventType.choices)
    value = models.FloatField(null=True, blank=True)
    timestamp = models.DateTimeField()
    recommendation_id = models.UUIDField(null=True, blank=True)
    context = models.JSONField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "timestamp"]),
            models.Index(fields=["item", "timestamp"]),
            # A user's items (serving's seen items, the rebuild's first event of each pair).
            models.Index(fields=["user", "item"], name="ix_interaction_user_item"),
            models.Index(fields=["timestamp"]),
            models.Index(fields=["recommendation_id"], condition=Q(recommendation_id__isnull=False), name="ix_rec_id"),
        ]

    def __str__(self):
        return f"{self.user_id} {self.event_type} {self.item_id} @ {self.timestamp:%Y-%m-%d %H:%M}"


class EventReceipt(models.Model):
    """An event id received, written in the transaction that stores the event: the first insert of an id wins and
    a retry (any timestamp, any partition) finds it here and is a duplicate. Not partitioned, so the id alone is
    unique. Kept as long as the events are (RetrainPolicy.event_retention_days, counted from `received_at`)."""

    event_id = models.UUIDField(primary_key=True)
    received_at = models.DateTimeField(db_index=True)

    def __str__(self):
        return str(self.event_id)


class UserItemFirstSeen(models.Model):
    """The first stored event of each (user, item) pair (its lowest key), kept forever (retention drops old events,
    not these): written by the ingest transaction that stores the pair's first event (an insert that skips recorded
    pairs), read by the fold and the rebuild to know which event counts the user in the item's distinct users, which
    so stays exact once the pair's old events are gone. `first_event` is that event's key (no foreign key: the
    events table is partitioned), `first_seen` its timestamp."""

    # The unique constraint's index leads with the user: no index of its own.
    user = models.ForeignKey(EndUser, on_delete=models.CASCADE, related_name="+", db_index=False)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="+")
    first_event = models.BigIntegerField(help_text="Interaction key of the pair's first event.")
    first_seen = models.DateTimeField()

    class Meta:
        verbose_name = verbose_name_plural = "user-item first seen"
        constraints = [models.UniqueConstraint(fields=["user", "item"], name="uniq_first_seen_user_item")]

    def __str__(self):
        return f"user {self.user_id} first saw item {self.item_id} @ {self.first_seen:%Y-%m-%d %H:%M}"


class PendingFold(models.Model):
    """A committed batch of events not yet folded into the online features (on PostgreSQL ingestion folds after
    its commit, in a transaction of its own: services.online_features.online_features_fold_pending). Written in
    the transaction that stores the events and deleted in the one that folds them, so a crash between the two
    leaves the row, and the next fold (any request's, or a web process's sweeper within FOLD_SWEEP_SECONDS)
    folds the batch: never lost, never folded twice."""

    event_ids = models.JSONField(help_text="Interaction keys of the batch's stored events.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{len(self.event_ids)} events to fold, stored {self.created_at:%Y-%m-%d %H:%M:%S}"


class UserFeatures(models.Model):
    """Online features of one user, updated by the fold of the user's events after their commit
    (services.online_features). Field meanings and update rules: recommendations.features (shared with training)."""

    user = models.OneToOneField(EndUser, on_delete=models.CASCADE, primary_key=True, related_name="features")
    event_count = models.IntegerField(default=0)
    counts_by_type = models.JSONField(default=dict)
    positive_count = models.IntegerField(default=0)
    rating_count = models.IntegerField(default=0)
    rating_sum = models.FloatField(default=0.0)
    first_seen = models.DateTimeField(null=True)
    last_seen = models.DateTimeField(null=True)
    recent_items = models.JSONField(default=list)
    category_counts = models.JSONField(default=dict)
    category_last_seen = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = verbose_name_plural = "user features"

    def __str__(self):
        return f"features of user {self.user_id}"

    def state(self) -> features.UserState:
        """This row as the feature definitions' UserState (a copy: folding events into it leaves the row as is)."""
        return user_state_of(values={name: getattr(self, name) for name in USER_STATE_FIELDS})

    def state_set(self, state: features.UserState) -> None:
        for name in USER_STATE_FIELDS:
            value = getattr(state, name)
            setattr(self, name, utc_datetime(value) if name in _USER_TIME_FIELDS else value)


# The one mapping between UserFeatures and features.UserState: the same names, times stored as datetimes and held
# as UNIX seconds. A serving query that reads the columns itself selects USER_STATE_FIELDS and calls user_state_of.
USER_STATE_FIELDS = tuple(field.name for field in dataclass_fields(features.UserState))
_USER_TIME_FIELDS = {
    name for name in USER_STATE_FIELDS if isinstance(UserFeatures._meta.get_field(name), models.DateTimeField)
}
_USER_JSON_FIELDS = {
    name for name in USER_STATE_FIELDS if isinstance(UserFeatures._meta.get_field(name), models.JSONField)
}


def user_state_of(*, values: dict) -> features.UserState:
    """A UserState from the USER_STATE_FIELDS values of a row, as the ORM reads them or as a cursor does (JSON as
    text and times naive UTC on SQLite; all None for a LEFT JOIN without a row: the empty state)."""
    if values["event_count"] is None:
        return features.UserState()
    for name in _USER_JSON_FIELDS:
        values[name] = json.loads(values[name]) if isinstance(values[name], str) else copy.deepcopy(values[name])
    for name in _USER_TIME_FIELDS:
        values[name] = utc_seconds(values[name])
    return features.UserState(**values)


def utc_seconds(moment: datetime | None) -> float | None:
    """UNIX seconds of a stored time: aware from the ORM and from a PostgreSQL cursor, naive UTC from SQLite's."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def utc_datetime(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


class ItemFeatures(models.Model):
    """Online features of one item. Updated by an additive upsert (see services.online_features) so that a hot
    item never holds a row lock longer than one statement at the end of the ingest transaction."""

    item = models.OneToOneField(Item, on_delete=models.CASCADE, primary_key=True, related_name="features")
    event_count = models.IntegerField(default=0)
    positive_count = models.IntegerField(default=0)
    rating_count = models.IntegerField(default=0)
    rating_sum = models.FloatField(default=0.0)
    first_event_at = models.DateTimeField(null=True)
    last_event_at = models.DateTimeField(null=True)
    log_pop_7d = models.FloatField(null=True)
    log_pop_30d = models.FloatField(null=True)
    user_count = models.IntegerField(default=0, help_text="distinct users with an event on the item")
    log_users_7d = models.FloatField(null=True, help_text="distinct users, decayed from each one's first event")

    class Meta:
        verbose_name = verbose_name_plural = "item features"
        indexes = [models.Index(fields=["-log_pop_7d"], name="ix_itemfeatures_trending")]

    def __str__(self):
        return f"features of item {self.item_id}"


class ApiKey(AbstractAPIKey):
    """An API key with scopes; the secret is stored hashed by djangorestframework-api-key."""

    scopes = models.JSONField(default=list)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"


class Impression(models.Model):
    """One served list, so that later events carrying its `recommendation_id` (or by the same user on a served
    item soon after) can be attributed to the version and arm that served it.

    `routed_version` is the version the request was routed to (the champion, or the challenger for a user in
    its arm), also when a fallback answered; `model_version` is the version whose list was served (None for
    the popular fallback). A shadow impression is the challenger's list for the request `shadow_of`, never
    shown to the user."""

    class Strategy(models.TextChoices):
        MODEL = "model"
        POPULAR = "popular"
        ERROR = "error", "error (the routed model failed; a fallback answered)"

    class Arm(models.TextChoices):
        CHAMPION = "champion"
        CHALLENGER = "challenger"
        SHADOW = "shadow"

    recommendation_id = models.UUIDField(unique=True)
    user = models.ForeignKey(EndUser, on_delete=models.CASCADE, related_name="impressions")
    model_version = models.PositiveIntegerField(null=True, blank=True, db_index=True)
    routed_version = models.PositiveIntegerField(null=True, blank=True, db_index=True)
    strategy = models.CharField(max_length=10, choices=Strategy.choices)
    arm = models.CharField(max_length=12, choices=Arm.choices, default=Arm.CHAMPION)
    experiment_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    shadow_of = models.UUIDField(null=True, blank=True)
    items = models.JSONField(default=list)
    scores = models.JSONField(default=list, help_text="the model's scores of the items, for prediction drift")
    served_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["user", "served_at"])]

    def __str__(self):
        return f"list {self.recommendation_id} ({self.arm}, {self.strategy})"


class ImpressionOutcome(models.Model):
    """What one served list earned, written once its attribution window has closed (by the outcome recorder,
    `recommendations.services.outcomes`), so that online metrics, triggers and experiment checks aggregate
    these rows instead of re-attributing raw impressions and events on every read. The impression's routing
    fields are copied so that no reader joins the impressions table.

    `clicked`/`hit` follow the usual attribution (recommendation_id first, then user, item and time);
    `clicked_by_time`/`hit_by_time` ignore the ids, which a shadow comparison needs for both arms to be
    attributed alike (set for the lists of an experiment only). `overlap` is, for a shadow list, the share of the
    shown list's top k it also had."""

    impression = models.OneToOneField(Impression, on_delete=models.CASCADE, primary_key=True, related_name="outcome")
    user_id = models.BigIntegerField()
    served_at = models.DateTimeField()
    arm = models.CharField(max_length=12, choices=Impression.Arm.choices)
    strategy = models.CharField(max_length=10, choices=Impression.Strategy.choices)
    model_version = models.PositiveIntegerField(null=True, blank=True)
    routed_version = models.PositiveIntegerField(null=True, blank=True)
    experiment_id = models.BigIntegerField(null=True, blank=True)
    clicked = models.BooleanField()
    hit = models.BooleanField()
    clicked_by_time = models.BooleanField(null=True)
    hit_by_time = models.BooleanField(null=True)
    rating_sum = models.FloatField(default=0.0)
    rating_count = models.PositiveIntegerField(default=0)
    delay_s = models.FloatField(null=True, blank=True, help_text="seconds from serving to the first engagement")
    overlap = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["experiment_id", "arm", "served_at"]),
            models.Index(fields=["model_version", "served_at"]),
            models.Index(fields=["routed_version", "served_at"]),
        ]

    def __str__(self):
        return f"outcome of impression {self.impression_id}"


class OutcomeWatermark(models.Model):
    """How far the outcome recorder has got: every impression served at or before `recorded_until` has its
    outcome row. Advanced by compare-and-set in the transaction that writes the rows. One row at most."""

    singleton = models.BooleanField(default=True, unique=True, editable=False)
    recorded_until = models.DateTimeField()

    def __str__(self):
        return f"outcomes recorded until {self.recorded_until:%Y-%m-%d %H:%M:%S}"


class CatalogState(models.Model):
    """How many items were ever deactivated, counted by a database trigger (migration 0005) whatever made
    the change: the API, the admin, a queryset update or plain SQL. Serving reads it with each request's
    user row and compares it with the count its item snapshot was built with: unchanged, no item the
    snapshot holds as active has been deactivated since, and the re-read of the served items' flags is
    skipped. One row (none on a database without the trigger: serving then always re-reads)."""

    singleton = models.BooleanField(default=True, unique=True, editable=False)
    deactivations = models.BigIntegerField(default=0)

    def __str__(self):
        return f"{self.deactivations} item deactivations"


class SystemClock(models.Model):
    """The clock that triggers and training cut-offs follow. Normally real time; a replay anchors it to
    the replayed timeline: now = simulated_anchor + (real now − real_anchor) × speed. One row at most."""

    singleton = models.BooleanField(default=True, unique=True, editable=False)
    simulated_anchor = models.DateTimeField()
    real_anchor = models.DateTimeField()
    speed = models.FloatField(default=1.0)

    def __str__(self):
        return f"simulated clock from {self.simulated_anchor:%Y-%m-%d %H:%M} ×{self.speed:g}"
