"""The online outcome of served lists: which events each impression earned (attribution, which the outcome
recorder in recommendations.services.outcomes runs once per list after its window closes) and the reads of
the recorded outcome rows: metrics per version, time bucket and arm, and an experiment's arms per user.

Attribution: an event carrying a `recommendation_id` belongs to that list; an event without one belongs to
the latest visible list that served its item to its user at most ATTRIBUTION_WINDOW_MINUTES before it. A
list earns an event only on an item it served. Shadow lists were never shown, so they are attributed by
user, item and time alone, and a shadow report attributes the champion's lists the same way so that the two
are compared like for like."""

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import connection
from django.db.models import Aggregate, Avg, Count, FloatField, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour

from recommendations.models import Impression, ImpressionOutcome, Interaction, OutcomeWatermark

CLICK_TYPES = ("view", "click", "like", "purchase")
ENGAGEMENT_TYPES = (*CLICK_TYPES, "rating")
HIT_K = 10
_IMPRESSION_COLUMNS = [
    "id",
    "recommendation_id",
    "user_id",
    "served_at",
    "arm",
    "model_version",
    "routed_version",
    "strategy",
    "experiment_id",
    "shadow_of",
    "items",
]
_EVENT_COLUMNS = ["user_id", "item_id", "event_type", "value", "timestamp", "recommendation_id"]
_OUTCOME_DEFAULTS = {"clicked": False, "hit": False, "rating_sum": 0.0, "rating_count": 0, "delay_s": np.nan}
_CHUNK = 5000


def attribution_window() -> timedelta:
    return timedelta(minutes=settings.ATTRIBUTION_WINDOW_MINUTES)


def impression_outcomes(*, impressions: QuerySet, by_recommendation_id: bool = True, k: int = HIT_K) -> pd.DataFrame:
    """One row per impression with what it earned: `clicked` (a view/click/like/purchase of a served item),
    `hit` (any engagement, ratings included, with one of its top k), `rating_sum`/`rating_count` of the
    attributed ratings and `delay_s` to its first engagement. `by_recommendation_id=False` ignores the ids
    events carry and attributes every event by user, item and time."""
    frame = pd.DataFrame.from_records(list(impressions.values_list(*_IMPRESSION_COLUMNS)), columns=_IMPRESSION_COLUMNS)
    if frame.empty:
        return frame.assign(**{name: pd.Series(dtype=type(value)) for name, value in _OUTCOME_DEFAULTS.items()})
    frame["served_at"] = _utc(frame["served_at"])
    shadow = frame["arm"] == Impression.Arm.SHADOW
    pairs = pd.concat(
        [
            _attributed(frame[~shadow], by_recommendation_id=by_recommendation_id, competitors=True),
            _attributed(frame[shadow], by_recommendation_id=False, competitors=False),
        ]
    )
    return frame.join(_earned(pairs, k), on="id").fillna(_OUTCOME_DEFAULTS).infer_objects()


def _attributed(frame: pd.DataFrame, *, by_recommendation_id: bool, competitors: bool) -> pd.DataFrame:
    """(impression id, position, served_at, event_type, value, timestamp) for each event `frame`'s lists earned."""
    if frame.empty:
        return pd.DataFrame(columns=["id", "position", "served_at", "event_type", "value", "timestamp"])
    window = attribution_window()
    start, end = frame["served_at"].min(), frame["served_at"].max() + window
    users = frame["user_id"].unique().tolist()
    pool = frame
    if competitors:  # a later list by another version that served the same item takes the event instead
        pool = pd.concat([frame, _visible_impressions_of(users, start - window, end)]).drop_duplicates("id")
    served = _served_items(pool)
    matched = []
    engagements = Interaction.objects.filter(event_type__in=ENGAGEMENT_TYPES)
    if by_recommendation_id:
        direct = _events(engagements, field="recommendation_id", values=frame["recommendation_id"].tolist())
        matched.append(direct.merge(served, on=["recommendation_id", "item_id"], suffixes=("", "_served")))
        engagements = engagements.filter(recommendation_id__isnull=True)
    nearby = engagements.filter(timestamp__gte=start, timestamp__lte=end)
    nearest = pd.merge_asof(
        _events(nearby, field="user_id", values=users).sort_values("timestamp"),
        served.drop(columns=["recommendation_id"]).sort_values("served_at"),
        left_on="timestamp",
        right_on="served_at",
        by=["user_id", "item_id"],
        direction="backward",
        tolerance=window,
    )
    matched.append(nearest[nearest["id"].notna()])
    pairs = pd.concat(matched)[["id", "position", "served_at", "event_type", "value", "timestamp"]]
    return pairs[pairs["id"].isin(frame["id"])]


def _rows_in_chunks(rows: QuerySet, *, field: str, values: list, columns: list[str]) -> list[tuple]:
    """`rows` whose `field` is one of `values`, queried _CHUNK values at a time."""
    found = []
    for offset in range(0, len(values), _CHUNK):
        found += rows.filter(**{f"{field}__in": values[offset : offset + _CHUNK]}).values_list(*columns)
    return found


def _events(events: QuerySet, *, field: str, values: list) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(
        _rows_in_chunks(events, field=field, values=values, columns=_EVENT_COLUMNS), columns=_EVENT_COLUMNS
    )
    frame["timestamp"] = _utc(frame["timestamp"])
    frame["user_id"] = frame["user_id"].astype("int64")
    frame["item_id"] = frame["item_id"].astype("int64")
    return frame


def _visible_impressions_of(users: list[int], start: datetime, end: datetime) -> pd.DataFrame:
    visible = Impression.objects.filter(served_at__gte=start, served_at__lte=end).exclude(arm=Impression.Arm.SHADOW)
    frame = pd.DataFrame.from_records(
        _rows_in_chunks(visible, field="user_id", values=users, columns=_IMPRESSION_COLUMNS),
        columns=_IMPRESSION_COLUMNS,
    )
    frame["served_at"] = _utc(frame["served_at"])
    return frame


def _utc(moments: pd.Series) -> pd.Series:
    return pd.to_datetime(moments, utc=True).astype("datetime64[ns, UTC]")


def _served_items(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (list, served item): id, recommendation_id, user_id, item_id, position, served_at."""
    served = frame[["id", "recommendation_id", "user_id", "served_at", "items"]].copy()
    served["item_id"] = served["items"]
    served = served.drop(columns="items").explode("item_id").dropna(subset=["item_id"])
    served["position"] = served.groupby("id").cumcount()
    served["item_id"] = served["item_id"].astype("int64")
    served["user_id"] = served["user_id"].astype("int64")
    return served


def _earned(pairs: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per impression id: clicked, hit, rating_sum, rating_count, delay_s."""
    if pairs.empty:
        return pd.DataFrame(columns=list(_OUTCOME_DEFAULTS)).rename_axis("id")
    pairs = pairs.assign(
        is_click=pairs["event_type"].isin(CLICK_TYPES),
        is_hit=pairs["position"].astype(int) < k,
        rating=pairs["value"].astype(float).where(pairs["event_type"] == "rating"),
        delay=(_utc(pairs["timestamp"]) - _utc(pairs["served_at"])).dt.total_seconds().clip(lower=0),
    )
    grouped = pairs.groupby("id")
    return pd.DataFrame(
        {
            "clicked": grouped["is_click"].any(),
            "hit": grouped["is_hit"].any(),
            "rating_sum": grouped["rating"].sum(),
            "rating_count": grouped["rating"].count(),
            "delay_s": grouped["delay"].min(),
        }
    )


@dataclass(frozen=True)
class ArmSummary:
    impressions: int
    users: int
    ctr: float | None
    hit_rate: float | None
    mean_rating: float | None
    median_delay_s: float | None
    cold_start_share: float | None
    error_share: float | None


def _tallies(*, by_time: bool = False) -> dict:
    """Aggregates of recorded outcomes behind an ArmSummary; `by_time` counts the clicks and hits attributed by
    user, item and time alone (what a shadow comparison uses for both arms)."""
    clicked, hit = ("clicked_by_time", "hit_by_time") if by_time else ("clicked", "hit")
    return {
        "lists": Count("pk"),
        "clicks": Count("pk", filter=Q(**{clicked: True})),
        "hits": Count("pk", filter=Q(**{hit: True})),
        "rating_sum": Coalesce(Sum("rating_sum"), 0.0),
        "rating_count": Coalesce(Sum("rating_count"), 0),
        "popular": Count("pk", filter=Q(strategy=Impression.Strategy.POPULAR)),
        "errors": Count("pk", filter=Q(strategy=Impression.Strategy.ERROR)),
    }


def _summary(tallies: dict, *, users: int, median_delay_s: float | None) -> ArmSummary:
    lists = tallies["lists"]
    if not lists:
        return ArmSummary(0, 0, None, None, None, None, None, None)
    return ArmSummary(
        impressions=lists,
        users=users,
        ctr=tallies["clicks"] / lists,
        hit_rate=tallies["hits"] / lists,
        mean_rating=tallies["rating_sum"] / tallies["rating_count"] if tallies["rating_count"] else None,
        median_delay_s=median_delay_s,
        cold_start_share=tallies["popular"] / lists,
        error_share=tallies["errors"] / lists,
    )


class _Median(Aggregate):
    """PostgreSQL's exact median (an ordered-set aggregate Django does not ship)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def _median_delays(outcomes: QuerySet, *, by: list[str]) -> dict[tuple, float]:
    """Median time to first engagement of the engaged lists among `outcomes`, per group of the fields `by`:
    computed by PostgreSQL, which returns one row per group; SQLite (the embedded default) has no median, so
    there the delays are read and the median taken here."""
    engaged = outcomes.exclude(delay_s=None)
    if connection.vendor == "postgresql":
        groups = (
            engaged.values(*by).annotate(median=_Median("delay_s")).order_by()
            if by
            else [engaged.aggregate(median=_Median("delay_s"))]
        )
        return {tuple(group[name] for name in by): group["median"] for group in groups if group["median"] is not None}
    found: dict[tuple, list[float]] = {}
    for *key, delay in engaged.values_list(*by, "delay_s"):
        found.setdefault(tuple(key), []).append(delay)
    return {key: float(np.median(delays)) for key, delays in found.items()}


def outcomes_recorded_until() -> datetime | None:
    """Every list served at or before this moment has its outcome row (None: nothing recorded yet)."""
    return OutcomeWatermark.objects.values_list("recorded_until", flat=True).first()


def online_metrics(*, version: int, start: datetime, end: datetime, bucket: str = "day") -> list[dict]:
    """Per time bucket (`day` or `hour`, UTC) and arm, the online metrics of the recorded lists routed to
    `version`. A bucket is complete once the outcomes of every list served in it are recorded; before, its
    lists whose attribution window is still open are not counted yet."""
    truncate = {"day": TruncDay, "hour": TruncHour}[bucket]
    outcomes = ImpressionOutcome.objects.filter(
        routed_version=version, served_at__gte=start, served_at__lt=end
    ).annotate(bucket=truncate("served_at", tzinfo=UTC))
    groups = outcomes.values("bucket", "arm").annotate(users=Count("user_id", distinct=True), **_tallies())
    medians = _median_delays(outcomes, by=["bucket", "arm"])
    recorded_until = outcomes_recorded_until()
    step = {"day": timedelta(days=1), "hour": timedelta(hours=1)}[bucket]
    return [
        {
            "bucket": group["bucket"].isoformat(),
            "arm": group["arm"],
            **asdict(
                _summary(group, users=group["users"], median_delay_s=medians.get((group["bucket"], group["arm"])))
            ),
            "complete": recorded_until is not None and group["bucket"] + step <= recorded_until,
        }
        for group in groups.order_by("bucket", "arm")
    ]


@dataclass(frozen=True)
class OnlineHitRate:
    impressions: int
    hits: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.impressions if self.impressions else None


def online_hit_rate(*, model_version: int, start: datetime, end: datetime) -> OnlineHitRate:
    """Share of the recorded lists `model_version` served (and showed) in [start, end) that earned a hit."""
    totals = (
        ImpressionOutcome.objects.filter(model_version=model_version, served_at__gte=start, served_at__lt=end)
        .exclude(arm=Impression.Arm.SHADOW)
        .aggregate(lists=Count("pk"), hits=Count("pk", filter=Q(hit=True)))
    )
    return OnlineHitRate(impressions=totals["lists"], hits=totals["hits"])


def outcome_first_served_at(*, model_version: int) -> datetime | None:
    """When the first recorded list `model_version` served (and showed) was served."""
    shown = ImpressionOutcome.objects.filter(model_version=model_version).exclude(arm=Impression.Arm.SHADOW)
    return shown.aggregate(first=Min("served_at"))["first"]


@dataclass(frozen=True)
class ArmOutcomes:
    """An experiment arm's recorded lists: its summary, and per user the lists, clicks and hits (users, not
    lists, are the independent units a comparison resamples)."""

    summary: ArmSummary
    lists: np.ndarray
    clicks: np.ndarray
    hits: np.ndarray


def experiment_arm_outcomes(*, experiment_id: int, arm: str, by_time: bool = False) -> ArmOutcomes:
    """One arm of an experiment from its recorded outcomes: one row per user is read, never the lists."""
    outcomes = ImpressionOutcome.objects.filter(experiment_id=experiment_id, arm=arm)
    per_user = list(outcomes.values("user_id").annotate(**_tallies(by_time=by_time)).order_by())
    totals = {name: sum(user[name] for user in per_user) for name in _tallies()}
    median = _median_delays(outcomes, by=[]).get(())
    per_user_column = {
        name: np.array([user[name] for user in per_user], dtype=float) for name in ("lists", "clicks", "hits")
    }
    return ArmOutcomes(summary=_summary(totals, users=len(per_user), median_delay_s=median), **per_user_column)


def experiment_overlap(*, experiment_id: int) -> float | None:
    """Mean share of the champion's top k that the shadow list also had, over the recorded shadowed requests."""
    shadows = ImpressionOutcome.objects.filter(experiment_id=experiment_id, arm=Impression.Arm.SHADOW)
    return shadows.aggregate(overlap=Avg("overlap"))["overlap"]


def arm_outcomes_count(*, experiment_id: int, arm: str, since: datetime) -> int:
    """Recorded lists of one arm of an experiment served since `since`."""
    return ImpressionOutcome.objects.filter(experiment_id=experiment_id, arm=arm, served_at__gte=since).count()
