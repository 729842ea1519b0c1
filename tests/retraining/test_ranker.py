from types import SimpleNamespace

import lightgbm as lgb
import pytest

from retraining.ml.ranker import EarlyStoppingAfter


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
