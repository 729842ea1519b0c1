"""The vectorized feature twins compute what the scalar definitions compute (online ingestion uses those)."""

import math

import numpy as np
import pytest

from recommendations import features, ranking

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


@pytest.mark.parametrize("seed", range(5))
def test_item_row_apply_folds_events_into_the_same_row_as_item_apply(seed):
    rng = np.random.default_rng(seed)
    states = [features.ItemState() for _ in range(6)]
    rows = [features.item_row_new() for _ in range(6)]
    seen = set()
    for _ in range(300):
        kind = str(rng.choice(["view", "click", "rating", "like", "purchase", "dislike"]))
        value = float(rng.choice([0.5, 2.0, 3.5, 4.0, 5.0])) if kind == "rating" and rng.random() < 0.9 else None
        u, i = int(rng.integers(8)), int(rng.integers(6))
        ts = 1.2e9 + float(rng.uniform(0, 4e8))  # out of order too: first/last and the log-adds see both
        first = (u, i) not in seen
        seen.add((u, i))
        features.item_apply(states[i], features.Event(u, i, kind, value, ts), first_of_user=first)
        features.item_row_apply(rows[i], kind, value, ts, first)
    for state, row in zip(states, rows):
        assert features.item_state_row(state) == pytest.approx(tuple(row), rel=0, abs=0, nan_ok=True)
        assert features.item_state_of_row(row) == state


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
