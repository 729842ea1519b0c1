"""The event log as compact arrays, and a point-in-time replay of it through the shared feature definitions.

Memory: one event costs 29 bytes in the arrays (int64 key, int32 user and item codes, int8 type, float32
value, float64 time), so 1M events take ~29 MB. The replay keeps every event of its window's item state
(item_states_after: 88 bytes per event) and builds a user's state when asked. Loading the log from the database
is retraining.services.dataset's job.
"""

from __future__ import annotations

import math
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
    """The users' and items' states at query times, as a replay of the log through features.user_apply and
    features.item_apply would hold them.

    `run(query_times, on_query)` calls `on_query(index)` for each query, in time order, when exactly the
    events with ts < query time count: an example at time t never sees an event at or after t. At a query,
    `user_state(u)` is the user's state (`recent_items` holding Item keys, as the online rows do),
    `candidate_items(codes)` the items' states as columns for the vectorized feature twins and `item_state(code)`
    one item's state.

    Nothing is folded event by event in Python. A user's state is computed when asked, from that user's events
    before the query (user_state_of: the same values as user_apply folding them in log order); the items' states
    come from item_states_after, computed once: every event's item state right after it.

    With `item_states` (ItemStatesAt: the items' states at the query times, computed elsewhere, e.g. on a
    cluster's item partitions) the log need only hold the asked users' events: items are not replayed.

    Users' `recent_items` hold the RECENT_ITEMS_FOR_SIMILARITY newest: the ranker reads no more."""

    def __init__(self, log: EventLog, *, item_states: ItemStatesAt | None = None):
        self.log = log
        self._given = item_states
        self._at = math.nan
        self._applied = 0
        self._after: ItemStatesAfter | None = None
        self._users: UserEvents | None = None
        self._category_names: dict[str, int] = {}
        self._categories = features.category_matrix(log.item_categories, self._category_names)

    def item_columns(self, codes: np.ndarray) -> np.ndarray:
        """The items' states as rows of features.ITEM_STATE_COLUMNS."""
        if self._given is not None:
            return self._given.rows(codes, self._at)
        if self._after is None:
            self._after = item_states_after(self.log)
        return self._after.rows(codes, self._applied)

    def candidate_items(self, codes: np.ndarray) -> CandidateItems:
        return CandidateItems(self.item_columns(codes), self._categories[codes], self._category_names)

    def item_state(self, code: int) -> features.ItemState:
        return features.item_state_of_row(self.item_columns(np.array([code]))[0])

    def user_state(self, user: int) -> features.UserState:
        if self._users is None:
            self._users = UserEvents(self.log, self._categories, self._category_names)
        return self._users.state(user, self._applied)

    def run(self, query_times: np.ndarray, on_query: Callable[[int], None]) -> None:
        order = np.argsort(query_times, kind="stable")
        bounds = np.searchsorted(self.log.ts, query_times[order], side="left")
        for query, bound in zip(order.tolist(), bounds.tolist()):
            if bound < self._applied:
                raise ValueError("queries must not go back in time across calls")
            self._applied = bound
            self._at = float(query_times[query])
            on_query(query)


class UserEvents:
    """Each user's events (indexes into the log, in log order), and a user's state from those before an index."""

    def __init__(self, log: EventLog, categories: np.ndarray, category_names: dict[str, int]):
        self.log, self.categories = log, categories
        self.names = sorted(category_names, key=category_names.get)
        self.by_user = np.argsort(log.user, kind="stable")
        self.bounds = np.searchsorted(log.user[self.by_user], np.arange(len(log.user_pks) + 1))
        self.is_rating, self.positive = log.is_rating(), log.positive()

    def state(self, user: int, applied: int) -> features.UserState:
        """What features.user_apply gives folding the user's events with index < `applied` in log order (the log
        is in time order): counts, the ratings' running sum in that order, first and last times, the newest items
        (the fold puts an event after the ones with the same time before it) and the categories' counts and
        latest times, an item's categories counted as often as it lists them."""
        log = self.log
        mine = self.by_user[self.bounds[user] : self.bounds[user + 1]]
        events = mine[: np.searchsorted(mine, applied)]
        state = features.UserState()
        if not len(events):
            return state
        ts = log.ts[events]
        kinds = np.bincount(log.event_type[events], minlength=len(EVENT_TYPES))
        rated = events[self.is_rating[events]]
        state.event_count = len(events)
        state.counts_by_type = {EVENT_TYPES[k]: n for k, n in enumerate(kinds.tolist()) if n}
        state.positive_count = int(np.count_nonzero(self.positive[events]))
        state.rating_count = len(rated)
        state.rating_sum = float(np.cumsum(log.value[rated].astype(np.float64))[-1]) if len(rated) else 0.0
        state.first_seen, state.last_seen = float(ts.min()), float(ts.max())
        newest = np.searchsorted(ts, ts[max(0, len(ts) - RECENT_ITEMS_FOR_SIMILARITY)], side="left")
        recent = np.lexsort((np.arange(newest, len(ts)), -ts[newest:]))[:RECENT_ITEMS_FOR_SIMILARITY] + newest
        item_pks = log.item_pks[log.item[events[recent]]]
        state.recent_items = [[pk, at] for pk, at in zip(item_pks.tolist(), ts[recent].tolist())]
        categories = self.categories[log.item[events]]
        listed = categories >= 0
        if listed.any():
            codes = categories[listed]
            counts = np.bincount(codes, minlength=len(self.names))
            latest = np.full(len(self.names), -np.inf)
            np.maximum.at(latest, codes, np.broadcast_to(ts[:, None], categories.shape)[listed])
            present = np.flatnonzero(counts).tolist()
            state.category_counts = {self.names[c]: int(counts[c]) for c in present}
            state.category_last_seen = {self.names[c]: float(latest[c]) for c in present}
        return state


@dataclass
class ItemStatesAfter:
    """Every event's item state right after it (rows of features.ITEM_STATE_COLUMNS), keyed by item then event."""

    keys: np.ndarray  # item * (events + 1) + event index, sorted
    columns: np.ndarray  # [events, len(ITEM_STATE_COLUMNS)] in key order
    n_events: int

    def rows(self, codes: np.ndarray, applied: int) -> np.ndarray:
        """The items' states once the events before index `applied` are folded: each item's row after its last
        such event, or the empty state."""
        base = codes.astype(np.int64) * (self.n_events + 1)
        last = np.searchsorted(self.keys, base + applied, side="left") - 1
        found = last >= 0
        found[found] = self.keys[last[found]] >= base[found]
        result = np.tile(_EMPTY_ITEM_ROW, (len(codes), 1))
        result[found] = self.columns[last[found]]
        return result


_EMPTY_ITEM_ROW = np.array(features.item_state_row(features.ItemState()), dtype=np.float64)


def item_states_after(log: EventLog) -> ItemStatesAfter:
    """Each event's item state right after it, as features.item_apply folds the item's events in log order: the
    counts as cumulative sums, first and last times as running min and max, and the decayed masses as running
    np.logaddexp, which computes features.log_add's max + log1p(exp(low - high)) (tests/retraining hold the two
    equal value for value). The floating-point sums run per item, in the fold's order."""
    n = len(log)
    order = np.argsort(log.item, kind="stable")
    item = log.item[order].astype(np.int64)
    starts = np.flatnonzero(np.concatenate([[True], item[1:] != item[:-1]])) if n else np.empty(0, np.int64)
    bounds = np.append(starts, n)
    group_start = np.repeat(starts, np.diff(bounds))
    value, ts = log.value[order].astype(np.float64), log.ts[order]
    is_rating = log.is_rating()[order]
    arrival = log.first_of_pair()[order]
    column = {name: index for index, name in enumerate(features.ITEM_STATE_COLUMNS)}
    columns = np.empty((n, len(column)), dtype=np.float64)

    def running_count(flags: np.ndarray) -> np.ndarray:
        total = np.cumsum(flags, dtype=np.int64)
        return total - total[group_start] + flags[group_start]

    columns[:, column["event_count"]] = np.arange(n) - group_start + 1
    columns[:, column["positive_count"]] = running_count(log.positive()[order])
    columns[:, column["rating_count"]] = running_count(is_rating)
    columns[:, column["user_count"]] = running_count(arrival)
    rating_added = np.where(is_rating, value, 0.0)
    mass_7d = features.log_decay_mass(ts, features.POPULARITY_HALF_LIVES_DAYS["7d"])
    mass_30d = features.log_decay_mass(ts, features.POPULARITY_HALF_LIVES_DAYS["30d"])
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        here = slice(start, stop)
        columns[here, column["rating_sum"]] = np.cumsum(rating_added[here])
        columns[here, column["first_event_at"]] = np.minimum.accumulate(ts[here])
        columns[here, column["last_event_at"]] = np.maximum.accumulate(ts[here])
        columns[here, column["log_pop_7d"]] = np.logaddexp.accumulate(mass_7d[here])
        columns[here, column["log_pop_30d"]] = np.logaddexp.accumulate(mass_30d[here])
        arrivals = np.flatnonzero(arrival[here])
        users_7d = np.logaddexp.accumulate(mass_7d[here][arrivals])
        latest = np.searchsorted(arrivals, np.arange(stop - start), side="right") - 1
        columns[here, column["log_users_7d"]] = np.where(latest >= 0, users_7d[np.maximum(latest, 0)], np.nan)
    return ItemStatesAfter(keys=item * (n + 1) + order, columns=columns, n_events=n)


@dataclass
class ItemStatesAt:
    """Items' states (rows of features.ITEM_STATE_COLUMNS) at some (item, time) pairs: what a replay of every
    event of those items would hold at that time. `times` are the distinct times; `keys` (sorted, distinct)
    encode each pair as item * len(times) + the time's index."""

    times: np.ndarray
    keys: np.ndarray
    columns: list[np.ndarray] | None = None  # the answers in key order, in pieces (one per item partition); None: asked

    @classmethod
    def asked(cls, items: np.ndarray, times: np.ndarray) -> ItemStatesAt:
        """The distinct (item, time) pairs among these, to be answered by ItemStatesReplayed.answer."""
        distinct, index = np.unique(times, return_inverse=True)
        return cls(distinct, np.unique(items.astype(np.int64) * len(distinct) + index.reshape(-1)))

    def pairs(self, items_from: int, items_to: int) -> tuple[np.ndarray, np.ndarray]:
        """The (items, times) asked about the items with codes in [items_from, items_to), in key order."""
        n = len(self.times)
        keys = self.keys[np.searchsorted(self.keys, items_from * n) : np.searchsorted(self.keys, items_to * n)]
        return keys // n, self.times[keys % n]

    def answered(self, pieces: list[np.ndarray]) -> ItemStatesAt:
        """These pairs with their states, in pieces that follow each other in key order (kept apart: joining them
        would hold every answer twice)."""
        if sum(len(piece) for piece in pieces) != len(self.keys):
            raise ValueError(f"{sum(len(piece) for piece in pieces)} item states answer {len(self.keys)} pairs")
        return ItemStatesAt(self.times, self.keys, pieces)

    def rows(self, codes: np.ndarray, at: float) -> np.ndarray:
        """The states of these items at `at`, which must have been asked for (nothing is guessed)."""
        time = np.searchsorted(self.times, at)
        keys = codes.astype(np.int64) * len(self.times) + time
        found = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        if time == len(self.times) or self.times[time] != at or not np.array_equal(self.keys[found], keys):
            raise KeyError(f"item states at {at} were not computed for all of these items")
        starts = np.cumsum([0] + [len(piece) for piece in self.columns])
        which = np.searchsorted(starts, found, side="right") - 1
        rows = np.empty((len(codes), len(features.ITEM_STATE_COLUMNS)), dtype=np.float64)
        for index, piece in enumerate(self.columns):
            here = which == index
            rows[here] = piece[found[here] - starts[index]]
        return rows


@dataclass
class ItemStatesReplayed:
    """A replay of `log`, which must hold every event of some items (an item partition of the log), kept to
    answer the states of those items at any (item, time) pairs: the same per-item sequence of item_apply as a
    replay of the whole log, so the same values. Replayed once (88 bytes an event), asked many times."""

    ts: np.ndarray
    after: ItemStatesAfter

    @classmethod
    def of(cls, log: EventLog) -> ItemStatesReplayed:
        return cls(log.ts, item_states_after(log))

    def answer(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """The state of each item at each time (pairs in any order): after the events before that time, as
        StateReplay.run counts them."""
        return self.after.rows(items, np.searchsorted(self.ts, times, side="left"))
