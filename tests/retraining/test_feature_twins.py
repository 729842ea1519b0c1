"""The vectorized feature twins compute what the scalar definitions compute (online ingestion uses those)."""

import math

import numpy as np
import pytest

from recommendations import features, ranking
from retraining.ml.events import EVENT_TYPES, StateReplay
from tests.retraining.factories import RawDataset, RawEvent, event_log_from

CATEGORIES = ["drama", "comedy", "crime", "kids"]
SHARE = {"drama": 0.5, "comedy": 0.3, "crime": 0.2}  # "kids" is not in the catalogue mix: no lift from it


def _random_history(rng, n_users=5, n_items=30, n_events=400):
    users = [features.UserState() for _ in range(n_users)]
    items = [features.ItemState() for _ in range(n_items)]
    item_categories = [list(rng.choice(CATEGORIES, size=rng.integers(0, 3), replace=True)) for _ in range(n_items)]
    start = 1.2e9
    seen = set()
    for _ in range(n_events):
        kind = str(rng.choice(["view", "click", "rating", "like", "purchase", "dislike"]))
        value = float(rng.choice([0.5, 2.0, 3.5, 4.0, 5.0])) if kind == "rating" else None
        u, i = int(rng.integers(n_users)), int(rng.integers(n_items // 2))  # half the items stay unseen
        event = features.Event(u, i, kind, value, start + float(rng.uniform(0, 4e8)))
        features.user_apply(users[u], event, item_categories[i])
        features.item_apply(items[i], event, first_of_user=(u, i) not in seen)
        seen.add((u, i))
    return users, items, item_categories, start + 4.5e8


def _same(batch, scalar):
    np.testing.assert_allclose(batch, np.array(scalar, dtype=np.float64), rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", range(5))
def test_item_features_batch_equals_item_features_for_every_item(seed):
    _, items, _, at = _random_history(np.random.default_rng(seed))
    batch = features.item_features_batch(features.item_state_columns(items), at)
    _same(batch, [features.item_features(state, at) for state in items])


@pytest.mark.parametrize("seed", range(5))
def test_pair_features_batch_equals_pair_features_for_every_user_and_item(seed):
    users, items, item_categories, at = _random_history(np.random.default_rng(seed))
    names: dict[str, int] = {}
    matrix = features.category_matrix(item_categories, names)
    columns = features.item_state_columns(items)
    for user in [*users, features.UserState()]:
        batch = features.pair_features_batch(user, columns, matrix, names, at, SHARE)
        _same(batch, [features.pair_features(user, s, c, at, SHARE) for s, c in zip(items, item_categories)])


def test_the_twins_handle_a_catalogue_without_categories():
    names: dict[str, int] = {}
    matrix = features.category_matrix([[], []], names)
    result = features.pair_features_batch(
        features.UserState(), features.item_state_columns([features.ItemState()] * 2), matrix, names, 1e9, {}
    )
    assert result.shape == (2, len(features.PAIR_FEATURES)) and all(math.isnan(v) for v in result.ravel())


@pytest.mark.parametrize("seed", range(3))
def test_regressor_feature_matrix_equals_the_scalar_features_for_every_user_and_item(seed):
    users, items, item_categories, at = _random_history(np.random.default_rng(seed))
    names: dict[str, int] = {}
    found = ranking.CandidateItems(
        features.item_state_columns(items), features.category_matrix(item_categories, names), names
    )
    for user in [*users, features.UserState()]:
        matrix = ranking.regressor_feature_matrix(user=user, items=found, at=at, category_share=SHARE)
        scalar = [
            features.item_features(s, at)
            + features.user_features(user, at)
            + features.pair_features(user, s, c, at, SHARE)
            for s, c in zip(items, item_categories)
        ]
        assert matrix.dtype == np.float32 and matrix.shape == (len(items), len(ranking.REGRESSOR_FEATURES))
        np.testing.assert_allclose(matrix, np.array(scalar, dtype=np.float32), rtol=1e-6, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", range(3))
def test_the_replays_states_equal_user_apply_and_item_apply_folding_the_events_before_each_query(seed):
    rng = np.random.default_rng(seed)
    kinds = ["view", "click", "rating", "like", "purchase", "dislike"]
    events = [
        RawEvent(
            int(rng.integers(6)),
            int(rng.integers(8)),
            kind := str(rng.choice(kinds)),
            float(rng.choice([0.5, 2.0, 4.0, 5.0])) if kind == "rating" and rng.random() < 0.9 else None,
            1.6e9 + float(rng.integers(0, 400)) * 3600.0,  # repeated times: ties between events and with queries
        )
        for _ in range(500)
    ]
    categories = [("drama",), ("drama", "crime"), (), ("comedy", "comedy")] + [("kids",)] * 6
    log = event_log_from(RawDataset(6, categories, events))
    queries = np.sort(rng.choice(np.unique(log.ts), 12, replace=False))
    replay = StateReplay(log)
    seen = []

    def on_query(_):
        items = [replay.item_state(code) for code in range(10)]
        seen.append((replay.item_columns(np.arange(10)), items, [replay.user_state(u) for u in range(6)]))

    replay.run(queries, on_query)
    for at, (columns, items, users) in zip(queries, seen):
        item_states, first = [features.ItemState() for _ in range(10)], set()
        user_states = [features.UserState() for _ in range(6)]
        for u, it, kind, value, ts in zip(
            *(a.tolist() for a in (log.user, log.item, log.event_type, log.value, log.ts))
        ):
            if ts < at:
                event = features.Event(u, it + 1, EVENT_TYPES[kind], None if value != value else value, ts)
                features.item_apply(item_states[it], event, first_of_user=(u, it) not in first)
                features.user_apply(user_states[u], event, categories[it])
                first.add((u, it))
        np.testing.assert_array_equal(columns, features.item_state_columns(item_states))
        assert items == item_states
        for state in user_states:  # the replay keeps the newest items the ranker reads
            del state.recent_items[ranking.RECENT_ITEMS_FOR_SIMILARITY :]
        assert users == user_states
