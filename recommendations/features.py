"""Feature definitions, shared by online ingestion, serving and training (no train/serve skew).

Everything here is pure: states are plain dataclasses with times as UNIX seconds, events are `Event`
tuples. Online ingestion (services.online_features) folds accepted events into the stored rows with these
functions; the training dataset builder replays the event log through the same functions to get the
state *strictly before* each example's time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # numpy is imported lazily: ingestion loads this module without it
    import numpy as np

DAY = 86400.0
# Decayed popularity is stored as log(sum_i exp(rate * (t_i - EPOCH))): adding an event is a log-add,
# commutative and order-free, so concurrent writers can merge with a single additive upsert, and the
# decayed count at time T is exp(log_mass - rate * (T - EPOCH)) with no overflow for any date.
EPOCH = 1_577_836_800.0  # 2020-01-01T00:00:00Z
POPULARITY_HALF_LIVES_DAYS = {"7d": 7.0, "30d": 30.0}
RECENT_ITEMS_KEPT = 50
POSITIVE_RATING = 4.0


class Event(NamedTuple):
    user_id: int
    item_id: int
    event_type: str
    value: float | None
    ts: float


def is_positive(event_type: str, value: float | None) -> bool:
    """The evaluation protocol's positive: rating >= 4, like or purchase."""
    if event_type == "rating":
        return value is not None and value >= POSITIVE_RATING
    return event_type in ("like", "purchase")


def _rate(half_life_days: float) -> float:
    return math.log(2.0) / (half_life_days * DAY)


def log_decay_mass(ts: float, half_life_days: float) -> float:
    return _rate(half_life_days) * (ts - EPOCH)


def decayed_count(log_mass: float | None, at: float, half_life_days: float) -> float:
    if log_mass is None:
        return 0.0
    return math.exp(min(log_mass - _rate(half_life_days) * (at - EPOCH), 700.0))


def log_add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log1p(math.exp(low - high))


# --- Items --------------------------------------------------------------------------------------


@dataclass
class ItemState:
    event_count: int = 0
    positive_count: int = 0
    rating_count: int = 0
    rating_sum: float = 0.0
    first_event_at: float | None = None
    last_event_at: float | None = None
    log_pop_7d: float | None = None
    log_pop_30d: float | None = None
    # Distinct users: each (user, item) pair counts once, at its first stored event (the lowest Interaction
    # key), so that one user repeating events cannot buy popularity. Online, that event is the one that
    # UserItemFirstSeen records for the pair (services.online_features.online_features_fold_enqueue).
    user_count: int = 0
    log_users_7d: float | None = None  # decayed distinct users, a log-mass like log_pop_7d


def item_delta(events: Iterable[Event], arrivals: Iterable[Event] = ()) -> ItemState:
    """The contribution of some events of one item, as a state to merge (see item_merge); `arrivals` are
    those of them that are their user's first event with the item."""
    delta = ItemState()
    for event in events:
        item_merge(delta, _single_event_item_state(event))
    for event in arrivals:
        item_merge(delta, _arrival_item_state(event))
    return delta


def _single_event_item_state(event: Event) -> ItemState:
    is_rating = event.event_type == "rating" and event.value is not None
    return ItemState(
        event_count=1,
        positive_count=int(is_positive(event.event_type, event.value)),
        rating_count=int(is_rating),
        rating_sum=float(event.value) if is_rating else 0.0,
        first_event_at=event.ts,
        last_event_at=event.ts,
        log_pop_7d=log_decay_mass(event.ts, POPULARITY_HALF_LIVES_DAYS["7d"]),
        log_pop_30d=log_decay_mass(event.ts, POPULARITY_HALF_LIVES_DAYS["30d"]),
    )


def _arrival_item_state(event: Event) -> ItemState:
    return ItemState(user_count=1, log_users_7d=log_decay_mass(event.ts, POPULARITY_HALF_LIVES_DAYS["7d"]))


def item_merge(state: ItemState, delta: ItemState) -> ItemState:
    """Fold `delta` into `state` in place. The SQL upsert in recommendations.sql does the same arithmetic."""
    state.event_count += delta.event_count
    state.positive_count += delta.positive_count
    state.rating_count += delta.rating_count
    state.rating_sum += delta.rating_sum
    state.first_event_at = _min(state.first_event_at, delta.first_event_at)
    state.last_event_at = _max(state.last_event_at, delta.last_event_at)
    state.log_pop_7d = log_add(state.log_pop_7d, delta.log_pop_7d)
    state.log_pop_30d = log_add(state.log_pop_30d, delta.log_pop_30d)
    state.user_count += delta.user_count
    state.log_users_7d = log_add(state.log_users_7d, delta.log_users_7d)
    return state


def item_apply(state: ItemState, event: Event, *, first_of_user: bool) -> ItemState:
    """Fold one event into `state`; `first_of_user`: it is its user's first stored event with the item."""
    item_merge(state, _single_event_item_state(event))
    return item_merge(state, _arrival_item_state(event)) if first_of_user else state


ITEM_FEATURES = [
    "item_event_count",
    "item_pop_7d",
    "item_pop_30d",
    "item_positive_rate",
    "item_rating_count",
    "item_mean_rating",
    "item_age_days",
    "item_days_since_last_event",
]


def item_features(state: ItemState, at: float) -> list[float]:
    """The item's features at time `at`, from a state holding only events before `at`."""
    nan = math.nan
    return [
        float(state.event_count),
        decayed_count(state.log_pop_7d, at, POPULARITY_HALF_LIVES_DAYS["7d"]),
        decayed_count(state.log_pop_30d, at, POPULARITY_HALF_LIVES_DAYS["30d"]),
        state.positive_count / state.event_count if state.event_count else nan,
        float(state.rating_count),
        state.rating_sum / state.rating_count if state.rating_count else nan,
        (at - state.first_event_at) / DAY if state.first_event_at is not None else nan,
        (at - state.last_event_at) / DAY if state.last_event_at is not None else nan,
    ]


# --- Users --------------------------------------------------------------------------------------


@dataclass
class UserState:
    event_count: int = 0
    counts_by_type: dict[str, int] = field(default_factory=dict)
    positive_count: int = 0
    rating_count: int = 0
    rating_sum: float = 0.0
    first_seen: float | None = None
    last_seen: float | None = None
    recent_items: list[list] = field(default_factory=list)  # [[item_id, ts], ...], newest first
    category_counts: dict[str, int] = field(default_factory=dict)
    category_last_seen: dict[str, float] = field(default_factory=dict)


def user_apply(state: UserState, event: Event, item_categories: Iterable[str]) -> UserState:
    """Fold one event of this user into `state` in place; events may arrive in any order."""
    state.event_count += 1
    state.counts_by_type[event.event_type] = state.counts_by_type.get(event.event_type, 0) + 1
    state.positive_count += int(is_positive(event.event_type, event.value))
    if event.event_type == "rating" and event.value is not None:
        state.rating_count += 1
        state.rating_sum += float(event.value)
    state.first_seen = _min(state.first_seen, event.ts)
    state.last_seen = _max(state.last_seen, event.ts)
    _remember_recent(state.recent_items, event.item_id, event.ts)
    for category in item_categories:
        state.category_counts[category] = state.category_counts.get(category, 0) + 1
        state.category_last_seen[category] = _max(state.category_last_seen.get(category), event.ts)
    return state


def _remember_recent(recent: list[list], item_id: int, ts: float) -> None:
    position = len(recent)
    while position > 0 and recent[position - 1][1] < ts:
        position -= 1
    recent.insert(position, [item_id, ts])
    del recent[RECENT_ITEMS_KEPT:]


USER_FEATURES = [
    "user_event_count",
    "user_positive_rate",
    "user_rating_count",
    "user_mean_rating",
    "user_days_active",
    "user_days_since_last_event",
]


def user_features(state: UserState, at: float) -> list[float]:
    nan = math.nan
    return [
        float(state.event_count),
        state.positive_count / state.event_count if state.event_count else nan,
        float(state.rating_count),
        state.rating_sum / state.rating_count if state.rating_count else nan,
        (at - state.first_seen) / DAY if state.first_seen is not None else nan,
        (at - state.last_seen) / DAY if state.last_seen is not None else nan,
    ]


# --- User x item --------------------------------------------------------------------------------

PAIR_FEATURES = [
    "user_category_affinity",
    "user_category_lift",
    "days_since_user_category_event",
    "user_mean_rating_gap",
]


def pair_features(
    user: UserState,
    item: ItemState,
    item_categories: Iterable[str],
    at: float,
    category_share: dict[str, float],
) -> list[float]:
    """How well the item's categories match the user's history.

    `category_share` is the catalogue's share of each category (the genre mix), so that the lift says how
    much more the user leans to these categories than the catalogue does."""
    categories = list(item_categories)
    total = sum(user.category_counts.values())
    if not categories or total == 0:
        return [math.nan, math.nan, math.nan, _rating_gap(user, item)]
    shares = [user.category_counts.get(c, 0) / total for c in categories]
    lifts = [share / category_share[c] for share, c in zip(shares, categories) if category_share.get(c)]
    seen = [user.category_last_seen[c] for c in categories if c in user.category_last_seen]
    return [
        sum(shares) / len(categories),
        sum(lifts) / len(lifts) if lifts else math.nan,
        (at - max(seen)) / DAY if seen else math.nan,
        _rating_gap(user, item),
    ]


def _rating_gap(user: UserState, item: ItemState) -> float:
    if not user.rating_count or not item.rating_count:
        return math.nan
    return item.rating_sum / item.rating_count - user.rating_sum / user.rating_count


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


# --- Vectorized twins (training and serving score hundreds of candidates at once) ---------------
# Each computes, for many items at one time `at`, exactly what its scalar definition above computes for
# one; tests/retraining/test_feature_twins.py holds them equal on random states.

ITEM_STATE_COLUMNS = [f.name for f in fields(ItemState)]  # the twins index columns in this order


def item_state_row(state: ItemState) -> tuple[float, ...]:
    """One ItemState as a row of ITEM_STATE_COLUMNS (None -> NaN)."""
    return tuple(math.nan if v is None else float(v) for v in (getattr(state, c) for c in ITEM_STATE_COLUMNS))


_ITEM_COUNT_COLUMNS = {f.name for f in fields(ItemState) if f.type == "int"}


def item_state_of_row(row) -> ItemState:
    """The inverse of item_state_row (NaN -> None, counts back to int): the same state, value for value."""
    values = {
        c: (None if v != v else int(v) if c in _ITEM_COUNT_COLUMNS else float(v))
        for c, v in zip(ITEM_STATE_COLUMNS, row.tolist())
    }
    return ItemState(**values)


def item_state_columns(states: Iterable[ItemState]) -> np.ndarray:
    import numpy as np

    return np.array([item_state_row(s) for s in states], dtype=np.float64).reshape(-1, len(ITEM_STATE_COLUMNS))


def _decayed_counts(log_mass, at: float, half_life_days: float):
    import numpy as np

    counts = np.exp(np.minimum(log_mass - _rate(half_life_days) * (at - EPOCH), 700.0))
    return np.where(np.isnan(log_mass), 0.0, counts)


def item_features_batch(columns: np.ndarray, at: float) -> np.ndarray:
    """item_features for each row of `columns` (ITEM_STATE_COLUMNS), as an [n, len(ITEM_FEATURES)] array."""
    import numpy as np

    # The distinct-user columns after these are not ranker features (the popular fallback orders by them).
    events, positives, ratings, rating_sum, first, last, pop7, pop30, *_ = columns.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.column_stack(
            [
                events,
                _decayed_counts(pop7, at, POPULARITY_HALF_LIVES_DAYS["7d"]),
                _decayed_counts(pop30, at, POPULARITY_HALF_LIVES_DAYS["30d"]),
                np.where(events > 0, positives / events, np.nan),
                ratings,
                np.where(ratings > 0, rating_sum / ratings, np.nan),
                (at - first) / DAY,
                (at - last) / DAY,
            ]
        )


def category_matrix(item_categories: Iterable[Iterable[str]], names: dict[str, int]) -> np.ndarray:
    """Items' categories as a padded [n, max categories] array of indexes into `names` (-1 pads).

    `names` maps category -> index and is extended with categories it does not know yet."""
    import numpy as np

    rows = [[names.setdefault(c, len(names)) for c in categories] for categories in item_categories]
    width = max((len(r) for r in rows), default=0)
    matrix = np.full((len(rows), max(width, 1)), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def pair_features_batch(
    user: UserState,
    columns: np.ndarray,
    categories: np.ndarray,
    names: dict[str, int],
    at: float,
    category_share: Mapping[str, float],
) -> np.ndarray:
    """pair_features for each item: `columns` are their states, `categories` their category_matrix rows."""
    import numpy as np

    ordered = sorted(names, key=names.get)
    has = categories >= 0
    index = np.where(has, categories, len(ordered))  # pads point at a trailing sentinel entry
    n_categories = has.sum(axis=1)
    total = sum(user.category_counts.values())
    counts = np.array([user.category_counts.get(c, 0) for c in ordered] + [0], dtype=np.float64)
    shares = np.where(has, counts[index] / total if total else 0.0, 0.0)
    catalogue = np.array([category_share.get(c, 0.0) for c in ordered] + [0.0], dtype=np.float64)[index]
    liftable = has & (catalogue != 0)
    last_seen = np.array([user.category_last_seen.get(c, -np.inf) for c in ordered] + [-np.inf])[index]
    latest = np.where(has, last_seen, -np.inf).max(axis=1)
    item_ratings, item_rating_sum = columns[:, 2], columns[:, 3]
    user_mean = user.rating_sum / user.rating_count if user.rating_count else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        affinity = shares.sum(axis=1) / n_categories
        lifts = np.where(liftable, shares / np.where(liftable, catalogue, 1.0), 0.0)
        lift = np.where(liftable.any(axis=1), lifts.sum(axis=1) / liftable.sum(axis=1), np.nan)
        recency = np.where(np.isfinite(latest), (at - latest) / DAY, np.nan)
        gap = np.where(item_ratings > 0, item_rating_sum / item_ratings, np.nan) - user_mean
    empty = (n_categories == 0) | (total == 0)
    nan = np.full(len(columns), np.nan)
    return np.column_stack(
        [np.where(empty, nan, affinity), np.where(empty, nan, lift), np.where(empty, nan, recency), gap]
    )
