import math

import numpy as np
import pytest

from retraining.ml.metrics import (
    BIAS_L2_DEFAULT,
    BIAS_L2_GRID,
    bias_fit,
    bias_l2_choose,
    ranking_metrics,
    rating_metrics,
)


def test_ranking_metrics_match_a_hand_computed_case():
    # Hits at positions 2 and 4 of 4; three relevant items, one never recommended.
    result = ranking_metrics(
        recommended=[np.array([10, 11, 12, 13])], positives=[np.array([11, 13, 99])], k=4, n_active_items=8
    )
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(2 / 4)
    assert result["map"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert result["ndcg"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert result["hit_rate"] == 1.0
    assert result["coverage"] == pytest.approx(4 / 8)


def test_a_perfect_list_scores_one_and_the_ideal_is_capped_at_k():
    result = ranking_metrics(recommended=[np.array([1, 2])], positives=[np.array([1, 2, 3, 4])], k=2, n_active_items=4)
    assert result["ndcg"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx(0.5)


def test_users_without_a_positive_are_left_out_of_the_average():
    result = ranking_metrics(
        recommended=[np.array([1, 2]), np.array([1, 2]), np.array([3, 4])],
        positives=[np.array([1]), np.array([], dtype=np.int64), np.array([5])],
        k=2,
        n_active_items=10,
    )
    assert result["users"] == 2
    assert result["hit_rate"] == pytest.approx(0.5)
    assert result["precision"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["coverage"] == pytest.approx(4 / 10)  # only the lists of averaged users count


def test_rating_metrics_match_a_hand_computed_case():
    result = rating_metrics(actual=np.array([1.0, 2.0, 3.0]), predicted=np.array([2.0, 2.0, 2.0]))
    assert result["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert result["mae"] == pytest.approx(2 / 3)
    assert result["r2"] == pytest.approx(1 - 2 / 2)


def test_r2_is_undefined_when_every_held_out_rating_is_the_same():
    result = rating_metrics(actual=np.array([4.0, 4.0]), predicted=np.array([3.0, 5.0]))
    assert math.isnan(result["r2"]) and result["rmse"] == pytest.approx(1.0) and result["mae"] == pytest.approx(1.0)


def test_the_bias_model_recovers_user_and_item_offsets_and_shrinks_sparse_ones():
    rng = np.random.default_rng(0)
    user_offset, item_offset = rng.normal(0, 0.5, 40), rng.normal(0, 0.7, 30)
    user, item = rng.integers(0, 40, 3000), rng.integers(0, 30, 3000)
    rating = 3.5 + user_offset[user] + item_offset[item] + rng.normal(0, 0.1, 3000)
    model = bias_fit(user=user, item=item, rating=rating, n_users=41, n_items=30, l2=1.0)
    predicted = model.predict(user=user, item=item)
    assert np.sqrt(np.mean((predicted - rating) ** 2)) < 0.12
    assert model.user_bias[40] == 0.0  # a user without ratings: the mean and the item's bias
    strong = bias_fit(user=user, item=item, rating=rating, n_users=41, n_items=30, l2=1000.0)
    assert np.abs(strong.user_bias).sum() < 0.5 * np.abs(model.user_bias).sum()


def test_the_bias_lambda_is_the_one_that_predicts_the_validation_ratings_best():
    rng = np.random.default_rng(1)
    user, item = rng.integers(0, 200, 400), rng.integers(0, 100, 400)
    noise_only = 3.0 + rng.normal(0, 1.0, 400)  # no real biases: heavy shrinkage wins
    split = (user[:300], item[:300], noise_only[:300]), (user[300:], item[300:], noise_only[300:])
    assert bias_l2_choose(fit=split[0], valid=split[1], n_users=200, n_items=100) == max(BIAS_L2_GRID)
    item_offset = rng.normal(0, 1.5, 100)
    strong = 3.0 + item_offset[item] + rng.normal(0, 0.05, 400)
    split = (user[:300], item[:300], strong[:300]), (user[300:], item[300:], strong[300:])
    assert bias_l2_choose(fit=split[0], valid=split[1], n_users=200, n_items=100) < 10
    empty = (np.empty(0, int), np.empty(0, int), np.empty(0))
    assert bias_l2_choose(fit=split[0], valid=empty, n_users=200, n_items=100) == BIAS_L2_DEFAULT
