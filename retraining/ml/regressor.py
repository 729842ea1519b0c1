"""The rating model: LightGBM regression on the shared item, user and pair features of rating events."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.metrics import rating_metrics
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import booster_train, lgb_params

RATING_METRICS = ("rmse", "mae", "r2")


def regressor_fit(matrix: np.ndarray, target: np.ndarray, params: TrainingParams) -> lgb.Booster:
    options = lgb_params(params, objective="regression", metric="rmse")
    validation = regressor_validation_rows(len(target), params)
    train = lgb.Dataset(matrix[~validation], target[~validation], feature_name=ranking.REGRESSOR_FEATURES)
    return booster_train(options, train, lgb.Dataset(matrix[validation], target[validation], reference=train), params)


def regressor_validation_rows(n_rows: int, params: TrainingParams) -> np.ndarray:
    return np.random.default_rng(params.seed).random(n_rows) < params.validation_fraction


def rating_predict(regressor: lgb.Booster, matrix: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(regressor.predict(matrix, num_threads=1), low, high) if len(matrix) else np.empty(0)


def rating_bounds(ratings: np.ndarray) -> tuple[float, float]:
    """The range predictions are clipped to: the ratings seen in the log ((0, 0) without any)."""
    return (float(ratings.min()), float(ratings.max())) if len(ratings) else (0.0, 0.0)


def rating_scores(regressor: lgb.Booster | None, *, matrix: np.ndarray, actual: np.ndarray,
                  bounds: tuple[float, float]) -> dict[str, float]:
    """RMSE, MAE and R² of the regressor's clipped predictions on `matrix` (NaN without a regressor)."""
    if regressor is None:
        return dict.fromkeys(RATING_METRICS, math.nan)
    rating = rating_metrics(actual=actual, predicted=rating_predict(regressor, matrix, *bounds))
    return {name: rating[name] for name in RATING_METRICS}
