"""Small datasets for the training tests: an in-memory event log (no database), or the same rows in the
database through the models."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from recommendations.models import EndUser, Interaction, Item
from retraining.ml.events import EVENT_TYPES, EventLog

START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
DAY = 86400.0


@dataclass(frozen=True)
class RawEvent:
    user: int  # index into the users
    item: int  # index into the items
    event_type: str
    value: float | None
    ts: float


@dataclass
class RawDataset:
    n_users: int
    item_categories: list[tuple[str, ...]]
    events: list[RawEvent]


def learnable_dataset(
    *, users: int = 160, items: int = 120, per_user: int = 30, seed: int = 0, genres: int = 6
) -> RawDataset:
    """Users with one favourite genre, items with one genre and a popularity. A user mostly picks items of
    the favourite genre and rates them high; other picks are rated low. Popularity alone cannot tell users
    apart; the ranker (genre affinity, collaborative score) can."""
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, genres, items)
    item_pop = rng.pareto(1.5, items) + 1.0
    favourite = rng.integers(0, genres, users)
    events = []
    for u in range(users):
        in_genre = np.where(item_genre == favourite[u], 6.0, 1.0)
        weights = item_pop * in_genre
        n = int(rng.integers(per_user // 2, per_user * 3 // 2))
        chosen = rng.choice(items, size=min(n, items), replace=False, p=weights / weights.sum())
        times = np.sort(START + rng.uniform(0, 120 * DAY, len(chosen)))
        for item, ts in zip(chosen.tolist(), times.tolist()):
            liked = item_genre[item] == favourite[u]
            rating = float(rng.choice([4.0, 4.5, 5.0]) if liked else rng.choice([1.0, 2.0, 2.5, 3.0]))
            kind = "rating" if rng.random() < 0.8 else ("like" if liked else "view")
            events.append(RawEvent(u, item, kind, rating if kind == "rating" else None, ts))
    return RawDataset(users, [(f"genre-{g}",) for g in item_genre.tolist()], events)


def event_log_from(dataset: RawDataset, *, active: np.ndarray | None = None) -> EventLog:
    """The EventLog that event_log_load would build for this dataset (keys 1..n, event keys in list order)."""
    n_items = len(dataset.item_categories)
    pk = np.arange(1, len(dataset.events) + 1, dtype=np.int64)
    ts = np.array([e.ts for e in dataset.events], dtype=np.float64)
    order = np.lexsort((pk, ts))
    column = lambda values, dtype: np.array(values, dtype=dtype)[order]  # noqa: E731
    return EventLog(
        event_pk=pk[order],
        user=column([e.user for e in dataset.events], np.int32),
        item=column([e.item for e in dataset.events], np.int32),
        event_type=column([EVENT_TYPES.index(e.event_type) for e in dataset.events], np.int8),
        value=column([np.nan if e.value is None else e.value for e in dataset.events], np.float32),
        ts=ts[order],
        user_pks=np.arange(1, dataset.n_users + 1, dtype=np.int64),
        item_pks=np.arange(1, n_items + 1, dtype=np.int64),
        item_external_ids=[f"item-{i}" for i in range(n_items)],
        item_categories=list(dataset.item_categories),
        item_active=np.ones(n_items, dtype=bool) if active is None else active,
    )


def dataset_with_events(dataset: RawDataset, events: list[RawEvent]) -> RawDataset:
    return replace(dataset, events=events)


def dataset_store(dataset: RawDataset) -> None:
    """Write the dataset as Item, EndUser and Interaction rows."""
    items = Item.objects.bulk_create(
        [Item(external_id=f"item-{i}", categories=list(c)) for i, c in enumerate(dataset.item_categories)]
    )
    users = EndUser.objects.bulk_create([EndUser(external_id=f"user-{u}") for u in range(dataset.n_users)])
    Interaction.objects.bulk_create(
        [
            Interaction(
                user=users[e.user],
                item=items[e.item],
                event_type=e.event_type,
                value=e.value,
                timestamp=datetime.fromtimestamp(e.ts, tz=UTC),
            )
            for e in dataset.events
        ],
        batch_size=5000,
    )
