"""The item side of serving, held in memory by each web process so that a request does not query items:
every item's external id, active flag, categories and online feature row, as arrays by Item key.

Freshness: serving rebuilds the snapshot when it is older than `ITEM_SNAPSHOT_SECONDS` (default 5 s), in
its poll thread (or on the request path when that thread is not running), so item features (popularity,
counts, mean rating), categories and new items reach recommendations within ITEM_SNAPSHOT_SECONDS +
MODEL_POLL_SECONDS. The `active` flag here only prunes candidates early: a deactivated item is never served,
however old the snapshot, because serving re-reads the flags of the items it is about to return unless the
catalogue's deactivation count (models.CatalogState, kept by a trigger) is still the one read with the
snapshot — then no item it holds as active can have been deactivated since. A user's own
features and history are never taken from here (each request reads them).

The snapshot does not depend on a model version: it is keyed by Item primary key, and a model maps its
catalogue codes to rows with `rows_of`. A rebuild is one query over Item and ItemFeatures (sql.item_snapshot_columns).
"""

import json
import math
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from recommendations import features
from recommendations.selectors.request_reads import catalog_deactivations
from recommendations.sql import item_snapshot_columns

_EMPTY_STATE = features.item_state_row(features.ItemState())
EVENT_COUNT = features.ITEM_STATE_COLUMNS.index("event_count")
USER_COUNT = features.ITEM_STATE_COLUMNS.index("user_count")
LOG_USERS_7D = features.ITEM_STATE_COLUMNS.index("log_users_7d")


@dataclass(frozen=True)
class ItemSnapshot:
    pks: np.ndarray  # int64 [n], ascending: row -> Item key
    external_ids: list[str]
    active: np.ndarray  # bool [n], as of built_at
    categories: np.ndarray  # int64 [n, width]: indexes into category_names, -1 pads (features.category_matrix)
    category_names: dict[str, int]
    columns: np.ndarray  # float64 [n, len(ITEM_STATE_COLUMNS)]: the ItemFeatures rows (an empty ItemState if none)
    trending: np.ndarray  # rows of the active items with features, the popular fallback's order
    deactivations: int | None = None  # CatalogState.deactivations, read before the items
    category_texts: list[str | None] = field(default_factory=list, repr=False)  # as read: the next build reuses
    built_at: float = field(default_factory=time.monotonic)

    def rows_of(self, pks: np.ndarray) -> np.ndarray:
        """Rows of these Item keys; -1 for a key the snapshot does not hold (an item created since)."""
        rows = np.searchsorted(self.pks, pks).clip(max=max(len(self.pks) - 1, 0))
        held = self.pks[rows] == pks if len(self.pks) else np.zeros(len(pks), dtype=bool)
        return np.where(held, rows, -1)

    def servable(self, rows: np.ndarray, *, category: str | None = None) -> np.ndarray:
        """Which of these rows (from rows_of) hold an active item, in `category` when one is given."""
        held = rows >= 0
        servable = np.zeros(len(rows), dtype=bool)
        servable[held] = self.active[rows[held]]
        if category:
            servable[held] &= self.in_category(rows[held], category)
        return servable

    def in_category(self, rows: np.ndarray, category: str) -> np.ndarray:
        index = self.category_names.get(category)
        if index is None:
            return np.zeros(len(rows), dtype=bool)
        return (self.categories[rows] == index).any(axis=1)

    def trend_score(self, row: int, at: float) -> float:
        """The popular fallback's score: the distinct users at `at`, decayed with a 7-day half-life."""
        log_pop = float(self.columns[row, LOG_USERS_7D])
        half_life = features.POPULARITY_HALF_LIVES_DAYS["7d"]
        return features.decayed_count(None if math.isnan(log_pop) else log_pop, at, half_life)

    @cached_property
    def pk_of_external_id(self) -> dict[str, int]:
        return dict(zip(self.external_ids, self.pks.tolist()))


def item_snapshot_build(previous: ItemSnapshot | None = None) -> ItemSnapshot:
    """All items and their online features, read now in one query. The catalogue's deactivation count is
    read before it: a deactivation committed in between is then seen twice (harmless), never missed. The
    category matrix of `previous` is reused when every item's categories read the same (they seldom change,
    and decoding them was half of a rebuild's CPU)."""
    deactivations = catalog_deactivations()
    pks, external_ids, active, categories, *state = item_snapshot_columns()
    columns, has_features = _state_columns(state)
    if previous is not None and previous.category_texts == categories:
        category_rows, names, categories = previous.categories, previous.category_names, previous.category_texts
    else:
        category_rows, names = _category_matrix(categories)
    pks = np.asarray(pks, dtype=np.int64)
    active = np.asarray(active, dtype=bool)
    return ItemSnapshot(
        pks=pks,
        external_ids=external_ids,
        active=active,
        categories=category_rows,
        category_names=names,
        columns=columns,
        trending=_trending_order(pks, active, columns, has_features=has_features),
        deactivations=deactivations,
        category_texts=categories,
    )


def _category_matrix(texts: list[str | None]) -> tuple[np.ndarray, dict[str, int]]:
    """features.category_matrix of the items' categories, given as JSON text: decoded once per distinct
    list, as catalogues repeat a few combinations (ml-latest-small: ~950 among 9,742 items)."""
    distinct: dict[str | None, int] = {}
    index = np.array([distinct.setdefault(text, len(distinct)) for text in texts], dtype=np.int64)
    names: dict[str, int] = {}
    matrix = features.category_matrix([(json.loads(text) or []) if text else [] for text in distinct], names)
    return matrix[index].reshape(len(texts), matrix.shape[1]), names


def _state_columns(state: list[list]) -> tuple[np.ndarray, np.ndarray]:
    """The ItemFeatures columns (None for an item without a row yet) as an array of ITEM_STATE_COLUMNS rows, and
    which items have a row; an item without one gets the values of an empty ItemState."""
    columns = np.empty((len(state[0]) if state else 0, len(features.ITEM_STATE_COLUMNS)), dtype=np.float64)
    for index, values in enumerate(state):
        columns[:, index] = np.asarray(values, dtype=np.float64)  # None -> NaN
    has_features = ~np.isnan(columns[:, EVENT_COUNT])
    columns[~has_features] = _EMPTY_STATE
    return columns, has_features


def _trending_order(
    pks: np.ndarray, active: np.ndarray, columns: np.ndarray, *, has_features: np.ndarray
) -> np.ndarray:
    """Decayed distinct users first (items without any last), then all-time distinct users, then all-time
    events, then key. Counting users, not events, so that one client repeating events cannot lead the list."""
    candidates = np.flatnonzero(active & has_features)
    log_users = columns[candidates, LOG_USERS_7D]
    popularity_key = np.where(np.isnan(log_users), np.inf, -log_users)
    by_events, by_users = -columns[candidates, EVENT_COUNT], -columns[candidates, USER_COUNT]
    return candidates[np.lexsort((pks[candidates], by_events, by_users, popularity_key))]
