"""The online outcome of served lists: which events each impression earned (attribution) and the metrics
built on it per version, time bucket and arm, and the comparison of an experiment's arms.

Attribution: an event carrying a `recommendation_id` belongs to that list; an event without one belongs to
the latest visible list that served its item to its user at most ATTRIBUTION_WINDOW_MINUTES before it. A
list earns an event only on an item it served. Shadow lists were never shown, so they are attributed by
user, item and time alone, and a shadow report attributes the champion's lists the same way so that the two
are compared like for like."""

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from django.conf import settings
from django.db.models import QuerySet

from recommendations.models import Impression, Interaction

CLICK_TYPES = ("view", "click", "like", "purchase")
ENGAGEMENT_TYPES = (*CLICK_TYPES, "rating")
HIT_K = 10
_IMPRESSION_COLUMNS = ["id", "recommendation_id", "user_id", "served_at", "arm", "model_version", "routed_version",
                       "strategy", "experiment_id", "shadow_of", "items"]
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
    pairs = pd.concat([
        _attributed(frame[~shadow], by_recommendation_id=by_recommendation_id, competitors=True),
        _attributed(frame[shadow], by_recommendation_id=False, competitors=False),
    ])
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
        left_on="timestamp", right_on="served_at", by=["user_id", "item_id"], direction="backward", tolerance=window,
    )
    matched.append(nearest[nearest["id"].notna()])
    pairs = pd.concat(matched)[["id", "position", "served_at", "event_type", "value", "timestamp"]]
    return pairs[pairs["id"].isin(frame["id"])]


def _rows_in_chunks(rows: QuerySet, *, field: str, values: list, columns: list[str]) -> list[tuple]:
    """`rows` whose `field` is one of `values`, queried _CHUNK values at a time."""
    found = []
    for offset in range(0, len(values), _CHUNK):
        found += rows.filter(**{f"{field}__in": values[offset:offset + _CHUNK]}).values_list(*columns)
    return found


def _events(events: QuerySet, *, field: str, values: list) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(_rows_in_chunks(events, field=field, values=values, columns=_EVENT_COLUMNS),
                                      columns=_EVENT_COLUMNS)
    frame["timestamp"] = _utc(frame["timestamp"])
    frame["user_id"] = frame["user_id"].astype("int64")
    frame["item_id"] = frame["item_id"].astype("int64")
    return frame


def _visible_impressions_of(users: list[int], start: datetime, end: datetime) -> pd.DataFrame:
    visible = Impression.objects.filter(served_at__gte=start, served_at__lte=end).exclude(arm=Impression.Arm.SHADOW)
    frame = pd.DataFrame.from_records(_rows_in_chunks(visible, field="user_id", values=users, columns=_IMPRESSION_COLUMNS),
                                      columns=_IMPRESSION_COLUMNS)
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
    return pd.DataFrame({
        "clicked": grouped["is_click"].any(),
        "hit": grouped["is_hit"].any(),
        "rating_sum": grouped["rating"].sum(),
        "rating_count": grouped["rating"].count(),
        "delay_s": grouped["delay"].min(),
    })


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


def arm_summary(outcomes: pd.DataFrame) -> ArmSummary:
    if outcomes.empty:
        return ArmSummary(0, 0, None, None, None, None, None, None)
    ratings = outcomes["rating_count"].sum()
    delays = outcomes["delay_s"].dropna()
    return ArmSummary(
        impressions=len(outcomes),
        users=int(outcomes["user_id"].nunique()),
        ctr=float(outcomes["clicked"].mean()),
        hit_rate=float(outcomes["hit"].mean()),
        mean_rating=float(outcomes["rating_sum"].sum() / ratings) if ratings else None,
        median_delay_s=float(delays.median()) if len(delays) else None,
        cold_start_share=float((outcomes["strategy"] == Impression.Strategy.POPULAR).mean()),
        error_share=float((outcomes["strategy"] == Impression.Strategy.ERROR).mean()),
    )


def online_metrics(*, version: int, start: datetime, end: datetime, bucket: str = "day", now: datetime) -> list[dict]:
    """Per time bucket (`day` or `hour`) and arm, the online metrics of the lists routed to `version`. A
    bucket that ends less than the attribution window before `now` is marked incomplete: events may still
    be attributed to its lists."""
    outcomes = impression_outcomes(impressions=Impression.objects.filter(routed_version=version, served_at__gte=start, served_at__lt=end))
    if outcomes.empty:
        return []
    frequency = {"day": "D", "hour": "h"}[bucket]
    outcomes["bucket"] = outcomes["served_at"].dt.floor(frequency)
    rows = []
    for (moment, arm), group in outcomes.groupby(["bucket", "arm"], sort=True):
        bucket_end = moment + pd.Timedelta(1, unit=frequency)
        rows.append({"bucket": moment.isoformat(), "arm": arm, **asdict(arm_summary(group)),
                     "complete": bool(bucket_end + attribution_window() <= pd.Timestamp(now))})
    return rows


@dataclass(frozen=True)
class OnlineHitRate:
    impressions: int
    hits: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.impressions if self.impressions else None


def online_hit_rate(*, model_version: int, start: datetime, end: datetime) -> OnlineHitRate:
    """Share of the lists `model_version` served (and showed) in [start, end) that earned a hit."""
    impressions = Impression.objects.filter(model_version=model_version, served_at__gte=start, served_at__lt=end).exclude(arm=Impression.Arm.SHADOW)
    outcomes = impression_outcomes(impressions=impressions)
    return OnlineHitRate(impressions=len(outcomes), hits=int(outcomes["hit"].sum()))


def arms_compare(*, experiment_id: int, treatment_arm: str, min_impressions: int, confidence: float = 0.95,
                 replicates: int = 1000, seed: int = 0) -> dict:
    """The champion's arm against the challenger's (or its shadow) in one experiment: each arm's metrics, the
    difference in CTR and hit rate with a bootstrap confidence interval over users (users, not lists, are
    the independent units), and a verdict once both arms have `min_impressions`. A shadow comparison
    attributes both arms by user, item and time, and adds the overlap of the two lists per request."""
    shadow = treatment_arm == Impression.Arm.SHADOW
    outcomes = impression_outcomes(impressions=Impression.objects.filter(experiment_id=experiment_id), by_recommendation_id=not shadow)
    arms = {arm: outcomes[outcomes["arm"] == arm] if not outcomes.empty else outcomes
            for arm in (Impression.Arm.CHAMPION, treatment_arm)}
    control, treatment = arms[Impression.Arm.CHAMPION], arms[treatment_arm]
    rng = np.random.default_rng(seed)
    differences = {metric: _difference(control, treatment, metric, confidence, replicates, rng) for metric in ("clicked", "hit")}
    sufficient = len(control) >= min_impressions and len(treatment) >= min_impressions
    report = {
        "arms": {arm: asdict(arm_summary(frame)) for arm, frame in arms.items()},
        "differences": {"ctr": differences["clicked"], "hit_rate": differences["hit"]},
        "min_impressions": min_impressions,
        "confidence": confidence,
        "sufficient_sample": sufficient,
        "verdict": _verdict(differences, sufficient),
        "attribution": "user, item and time" if shadow else "recommendation_id, then user, item and time",
    }
    if shadow:
        report["overlap_at_k"] = _overlap(outcomes)
    return report


def _difference(control: pd.DataFrame, treatment: pd.DataFrame, metric: str, confidence: float, replicates: int,
                rng: np.random.Generator) -> dict:
    if control.empty or treatment.empty:
        return {"delta": None, "ci_low": None, "ci_high": None}
    delta = float(treatment[metric].mean() - control[metric].mean())
    spread = _bootstrap_rate(treatment, metric, replicates, rng) - _bootstrap_rate(control, metric, replicates, rng)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(spread, [tail, 100 - tail])
    return {"delta": delta, "ci_low": float(low), "ci_high": float(high)}


def _bootstrap_rate(outcomes: pd.DataFrame, metric: str, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """The arm's rate (successes / lists) over `replicates` resamples of its users with replacement."""
    per_user = outcomes.groupby("user_id")[metric].agg(["sum", "count"])
    successes, counts = per_user["sum"].to_numpy(dtype=float), per_user["count"].to_numpy(dtype=float)
    rates = np.empty(replicates)
    step = max(1, 2_000_000 // len(per_user))
    for start in range(0, replicates, step):
        picks = rng.integers(0, len(per_user), size=(min(step, replicates - start), len(per_user)))
        rates[start:start + len(picks)] = successes[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return rates


def _verdict(differences: dict, sufficient: bool) -> str:
    if not sufficient:
        return "insufficient_sample"
    intervals = [differences[m] for m in ("clicked", "hit") if differences[m]["delta"] is not None]
    if any(interval["ci_high"] < 0 for interval in intervals):
        return "challenger_worse"
    if any(interval["ci_low"] > 0 for interval in intervals):
        return "challenger_better"
    return "no_significant_difference"


def _overlap(outcomes: pd.DataFrame) -> float | None:
    """Mean share of the champion's top k that the shadow list also had, per shadowed request."""
    if outcomes.empty:
        return None
    shown = outcomes[outcomes["arm"] == Impression.Arm.CHAMPION].set_index("recommendation_id")["items"]
    shares = [len(set(items[:HIT_K]) & set(shown[of][:HIT_K])) / max(1, min(HIT_K, len(shown[of])))
              for of, items in outcomes.loc[outcomes["arm"] == Impression.Arm.SHADOW, ["shadow_of", "items"]].itertuples(index=False)
              if of in shown.index]
    return float(np.mean(shares)) if shares else None


def arm_impressions_count(*, experiment_id: int, arm: str, since: datetime) -> int:
    return Impression.objects.filter(experiment_id=experiment_id, arm=arm, served_at__gte=since).count()
