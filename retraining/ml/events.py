"""The event log as compact arrays, and a point-in-time replay of it through the shared feature definitions.

Memory: one event costs 29 bytes in the arrays (int64 key, int32 user and item codes, int8 type, float32
value, float64 time), so 1M events take ~29 MB. The replay keeps one UserState per user and one ItemState
per item. Loading the log from the database is retraining.services.dataset's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recommendations import features
from recommendations.ranking import RECENT_ITEMS_FOR_SIMILARITY, CandidateItems

# The values of recommendations.models.EventType, in its order (this package imports no Django; a test holds
# the two equal). An event's type is stored as its index here.
EVENT_TYPES = ["view", "click", "like", "rating", "purchase", "dislike"]
EVENT_TYPE_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}


@dataclass
class EventLog:
    """Events sorted by (time, user, item, type, value, id); users and items as codes into the catalogue arrays,
    which are in the order of the external ids (retraining.services.dataset): no order depends on keys."""

    event_pk: np.ndarray  # int64
    user: np.ndarray  # int32 code into user_pks
    item: np.ndarray  # int32 code into item_pks
    event_type: np.ndarray  # int8 code into EVENT_TYPES
    value: np.ndarray  # float32, NaN when absent
    ts: np.ndarray  # float64 UNIX seconds
    user_pks: np.ndarray  # int64 [U]
    item_pks: np.ndarray  # int64 [N]
    item_external_ids: list[str]
    item_categories: list[tuple[str, ...]]
    item_active: np.ndarray  # bool [N]
    until: float | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def positive(self) -> np.ndarray:
        """features.is_positive, vectorized over the log."""
        rating = self.event_type == EVENT_TYPE_CODE["rating"]
        liked = np.isin(self.event_type, [EVENT_TYPE_CODE["like"], EVENT_TYPE_CODE["purchase"]])
        return (rating & (self.value >= features.POSITIVE_RATING)) | liked

    def first_of_pair(self) -> np.ndarray:
        """Whether each event is the first (in log order) of its user with its item: the one that counts the
        user in the item's distinct users (features.ItemState)."""
        pair = self.user.astype(np.int64) * len(self.item_pks) + self.item
        order = np.argsort(pair, kind="stable")
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = pair[order][1:] != pair[order][:-1]
        first = np.zeros(len(order), dtype=bool)
        first[order[starts]] = True
        return first

    def is_rating(self) -> np.ndarray:
        return (self.event_type == EVENT_TYPE_CODE["rating"]) & ~np.isnan(self.value)

    def category_share(self) -> dict[str, float]:
        """The genre mix of the active catalogue: each category's share of all category assignments."""
        counts: dict[str, int] = {}
        for categories, active in zip(self.item_categories, self.item_active.tolist()):
            if active:
                for category in categories:
                    counts[category] = counts.get(category, 0) + 1
        total = sum(counts.values())
        return {c: n / total for c, n in sorted(counts.items())} if total else {}

    def subset(self, mask: np.ndarray) -> EventLog:
        return EventLog(
            event_pk=self.event_pk[mask],
            user=self.user[mask],
            item=self.item[mask],
            event_type=self.event_type[mask],
            value=self.value[mask],
            ts=self.ts[mask],
            user_pks=self.user_pks,
            item_pks=self.item_pks,
            item_external_ids=self.item_external_ids,
            item_categories=self.item_categories,
            item_active=self.item_active,
            until=self.until,
        )


class StateReplay:
    """Replays a log in time order through features.user_apply / features.item_apply.

    `run(query_times, on_query)` calls `on_query(index)` for each query, in time order, when exactly the
    events with ts < query time have been applied: an example at time t never sees an event at or after t.
    States are keyed by code; `user_states[u].recent_items` holds Item keys, as the online rows do.
    `candidate_items(codes)` gives the items' states as columns for the vectorized feature twins.

    Users' `recent_items` are cut to the RECENT_ITEMS_FOR_SIMILARITY newest after each event: the ranker
    reads no more, and the newest n of a list are the newest n of its newest n plus the new event, so the
    kept prefix equals the online one while each insertion stays O(n) instead of O(50)."""

    def __init__(self, log: EventLog, *, users: np.ndarray | None = None):
        """`users`: the only users whose states are needed (default: all)."""
        self.log = log
        self._tracked = np.ones(len(log.user_pks), dtype=bool)
        if users is not None:
            self._tracked[:] = False
            self._tracked[users] = True
        self.user_states: dict[int, features.UserState] = {}
        self.item_states: dict[int, features.ItemState] = {}
        self._applied = 0
        self._columns = np.tile(features.item_state_row(features.ItemState()), (len(log.item_pks), 1))
        self._changed: set[int] = set()
        self._category_names: dict[str, int] = {}
        self._categories = features.category_matrix(log.item_categories, self._category_names)

    def candidate_items(self, codes: np.ndarray) -> CandidateItems:
        for code in self._changed:
            self._columns[code] = features.item_state_row(self.item_states[code])
        self._changed.clear()
        return CandidateItems(self._columns[codes], self._categories[codes], self._category_names)

    def run(self, query_times: np.ndarray, on_query: Callable[[int], None]) -> None:
        order = np.argsort(query_times, kind="stable")
        bounds = np.searchsorted(self.log.ts, query_times[order], side="left")
        user, item, value, ts, first = (
            a.tolist() for a in (self.log.user, self.log.item, self.log.value, self.log.ts, self.log.first_of_pair())
        )
        kind = [EVENT_TYPES[k] for k in self.log.event_type.tolist()]
        item_pks, categories = self.log.item_pks.tolist(), self.log.item_categories
        user_states, item_states, changed = self.user_states, self.item_states, self._changed
        tracked = self._tracked.tolist()
        position = self._applied
        for query, bound in zip(order.tolist(), bounds.tolist()):
            if bound < position:
                raise ValueError("queries must not go back in time across calls")
            for i in range(position, bound):
                u, it = user[i], item[i]
                v = None if value[i] != value[i] else value[i]
                event = features.Event(u, item_pks[it], kind[i], v, ts[i])
                if tracked[u]:
                    state = user_states.setdefault(u, features.UserState())
                    features.user_apply(state, event, categories[it])
                    del state.recent_items[RECENT_ITEMS_FOR_SIMILARITY:]
                features.item_apply(item_states.setdefault(it, features.ItemState()), event, first_of_user=first[i])
                changed.add(it)
            position = max(position, bound)
            on_query(query)
        self._applied = position
