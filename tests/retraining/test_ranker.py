import itertools
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import pytest

from recommendations import ranking
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import EarlyStoppingAfter, RankerExamples, ranker_blend_fit, ranker_fit


def _after_each_tree(stopping: EarlyStoppingAfter, scores: list[float], higher_is_better: bool = True) -> int:
    """Feed the callback one validation score per tree; returns the trees built when it stopped."""
    for iteration, score in enumerate(scores):
        stopping(
            SimpleNamespace(
                iteration=iteration, evaluation_result_list=[("valid_0", "metric", score, higher_is_better)]
            )
        )
    return len(scores)


def test_an_early_peak_before_the_minimum_model_size_does_not_stop_training():
    stopping = EarlyStoppingAfter(min_rounds=5, patience=3)
    scores = [0.9, 0.95, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5]  # the best score falls on the 2nd tree
    assert _after_each_tree(stopping, scores) == len(scores)
    assert stopping.best_iteration == 8


def test_training_stops_after_patience_trees_without_gain_and_keeps_the_best_model():
    stopping = EarlyStoppingAfter(min_rounds=2, patience=3)
    with pytest.raises(lgb.callback.EarlyStopException) as stopped:
        _after_each_tree(stopping, [0.1, 0.5, 0.7, 0.6, 0.6, 0.6, 0.6])
    assert stopping.best_iteration == 3 and stopped.value.best_iteration == 2  # LightGBM counts from 0


def test_a_metric_where_lower_is_better_keeps_the_lowest_score():
    stopping = EarlyStoppingAfter(min_rounds=1, patience=2)
    with pytest.raises(lgb.callback.EarlyStopException):
        _after_each_tree(stopping, [1.0, 0.8, 0.9, 0.95], higher_is_better=False)
    assert stopping.best_iteration == 2


def _examples(queries: int = 60, size: int = 20, seed: int = 0) -> RankerExamples:
    """Queries whose labels follow the first feature, each candidate with a distinct popularity rank."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(queries * size, len(ranking.RANKER_FEATURES))).astype(np.float32)
    matrix[:, ranking.POP_RANK_COLUMN] = np.concatenate([rng.permutation(200)[:size] + 1 for _ in range(queries)])
    labels = (matrix[:, 0] > 1.0).astype(np.int8)
    return RankerExamples(matrix, labels, np.full(queries, size), np.arange(queries, dtype=np.int64))


@pytest.fixture(scope="module")
def fitted():
    examples = _examples()
    return ranker_fit(examples, TrainingParams(num_threads=1)), examples


def _orders(scores: np.ndarray, groups: np.ndarray) -> list[list[int]]:
    bounds = np.concatenate([[0], np.cumsum(groups)])
    return [np.lexsort((np.arange(b - a), -scores[a:b])).tolist() for a, b in itertools.pairwise(bounds)]


def test_a_blend_without_the_prior_ranks_by_the_ranker_alone(fitted):
    booster, examples = fitted
    blend = ranker_blend_fit(booster, examples, 0.0)
    raw = ranking.ranker_scores(booster, examples.matrix)
    assert blend == ranking.RANKER_ALONE
    np.testing.assert_array_equal(blend.scores(raw, examples.matrix), raw)


def test_a_blend_with_the_whole_prior_ranks_each_query_by_popularity(fitted):
    booster, examples = fitted
    blend = ranker_blend_fit(booster, examples, 1.0)
    scores = blend.scores(ranking.ranker_scores(booster, examples.matrix), examples.matrix)
    by_popularity = -examples.matrix[:, ranking.POP_RANK_COLUMN].astype(np.float64)
    assert _orders(scores, examples.groups) == _orders(by_popularity, examples.groups)


def test_a_half_share_gives_the_ranker_and_the_prior_the_same_spread_within_a_query(fitted):
    booster, examples = fitted
    blend = ranker_blend_fit(booster, examples, 0.5)
    raw = ranking.ranker_scores(booster, examples.matrix)
    prior = ranking.popularity_prior(examples.matrix)

    def spread(values):
        return np.mean([part.std() for part in np.split(values, np.cumsum(examples.groups)[:-1])])

    assert spread(blend.ranker_coefficient * raw) == pytest.approx(spread(blend.prior_coefficient * prior))
    blended_order = _orders(blend.scores(raw, examples.matrix), examples.groups)
    assert blended_order != _orders(raw, examples.groups) and blended_order != _orders(-prior, examples.groups)


def test_the_blend_scores_each_candidate_alone_so_filtering_never_reorders_the_rest(fitted):
    booster, examples = fitted
    blend = ranker_blend_fit(booster, examples, 0.4)
    raw = ranking.ranker_scores(booster, examples.matrix)
    kept = np.random.default_rng(1).random(len(raw)) < 0.5
    np.testing.assert_array_equal(
        blend.scores(raw[kept], examples.matrix[kept]), blend.scores(raw, examples.matrix)[kept]
    )


def test_a_manifest_without_a_blend_ranks_by_the_ranker_alone():
    assert ranking.RankerBlend.of_manifest({"params": {}}) == ranking.RANKER_ALONE
    recorded = {"params": {"ranker_blend": {"ranker_coefficient": 0.5, "prior_coefficient": 0.25}}}
    assert ranking.RankerBlend.of_manifest(recorded) == ranking.RankerBlend(0.5, 0.25)


def test_the_pointwise_setting_learns_whether_a_candidate_is_a_positive():
    examples = _examples()
    examples.labels[examples.labels > 0] = 2  # graded like a 5-star rating: still one class for "binary"
    booster = ranker_fit(examples, TrainingParams(num_threads=1, ranker_objective="binary"))
    scores = ranking.ranker_scores(booster, examples.matrix)
    assert booster.params["objective"] == "binary" and ((scores > 0) & (scores < 1)).all()
    positives = examples.labels > 0
    assert scores[positives].mean() > scores[~positives].mean() + 0.2
