"""The rating model: regularised user + item biases, and LightGBM regression trees on their residual from the
shared item, user and pair features plus the biases themselves.

Both parts mirror the evaluation one level down, inside the training portion: the biases are fitted on the
fit portion (the training portion minus the label windows), λ chosen by RMSE on the label windows' ratings;
the trees learn the residual of those biases on the label windows' ratings, with features at the start of
each user's label window. To predict the holdout, the biases are fitted again (same λ) on the whole
training portion and the trees read features at the start of each user's holdout: the biases are a
point-in-time feature of the data before the prediction, as EASE's scores are for the ranker.

The trees are kept only when they beat the biases alone on a validation share of their rows; otherwise the
bias model is the rating model (kind "bias"), and the manifest says so."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import lightgbm as lgb
import numpy as np
from sklearn.metrics import root_mean_squared_error

from recommendations import ranking
from retraining.ml.events import EventLog
from retraining.ml.metrics import BiasModel, bias_fit, bias_l2_choose, rating_metrics
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import booster_train, lgb_params
from retraining.ml.replay import Evaluation
from retraining.ml.split import Split

RATING_METRICS = ("rmse", "mae", "r2")
# The biases themselves, and the user's bias residuals on the items EASE relates to the rated item (weights B[j, i]
# of the items j the user rated: an item-neighbourhood correction of the biases) with the weights' total.
BIAS_FEATURES = ["bias_user", "bias_item", "bias_rating", "neighbour_residual", "neighbour_weight"]
RATING_FEATURES = ranking.REGRESSOR_FEATURES + BIAS_FEATURES
KIND_RESIDUAL, KIND_BIAS, KIND_DIRECT = "bias+residual", "bias", "direct"  # direct: versions before the biases
# weights_gather copies whole rows, WHOLE_ROWS_CHUNK at a time, from this many columns on (on the 1M scaling
# timeline's holdout, 1.6 s of gathering against 3.2-3.6 s cell by cell; 16-128 columns and chunks of 256 within 20%)
WHOLE_ROWS_FROM_COLUMNS, WHOLE_ROWS_CHUNK = 32, 64
MIN_RESIDUAL_ROUNDS = 10  # the residual is small: its early stopping may stop well before the ranker's minimum


@dataclass
class RatingModel:
    kind: str
    bias_l2: float
    booster: lgb.Booster | None  # the residual trees (kind bias+residual) or the whole model (kind direct)

    def manifest(self) -> dict:
        return {
            "kind": self.kind,
            "bias_l2": self.bias_l2,
            "features": RATING_FEATURES if self.kind == KIND_RESIDUAL else ranking.REGRESSOR_FEATURES,
        }

    def predict(self, *, matrix: np.ndarray, context: RatingContext, events: np.ndarray) -> np.ndarray:
        """Ratings for rows of REGRESSOR_FEATURES of these rating events."""
        if self.kind == KIND_DIRECT:
            return self.booster.predict(matrix, num_threads=1) if len(matrix) else np.empty(0)
        user, item = context.log.user[events], context.log.item[events]
        base = context.biases.predict(user=user, item=item)
        if self.kind == KIND_BIAS or not len(matrix):
            return base
        return base + self.booster.predict(context.columns(matrix, events), num_threads=1)


def rating_model_of(*, booster: lgb.Booster | None, manifest: dict) -> RatingModel | None:
    """The rating model of a stored version (None if it has none)."""
    spec = manifest.get("rating_model")
    if spec is None:
        return RatingModel(KIND_DIRECT, math.nan, booster) if booster is not None else None
    return RatingModel(spec["kind"], float(spec["bias_l2"]), booster)


def log_biases(log: EventLog, mask: np.ndarray, l2: float) -> BiasModel:
    """User + item biases fitted on the ratings among the events of `mask`."""
    ratings = mask & log.is_rating()
    return bias_fit(
        user=log.user[ratings],
        item=log.item[ratings],
        rating=log.value[ratings],
        n_users=len(log.user_pks),
        n_items=len(log.item_pks),
        l2=l2,
    )


@dataclass
class RatingContext:
    """What the bias features of a prediction are computed from: the ratings in `mask` (the data before the
    predictions), the biases fitted on them and the collaborative model fitted on the same events."""

    log: EventLog
    mask: np.ndarray
    biases: BiasModel
    collaborative: ranking.CollaborativeModel

    @classmethod
    def fit(cls, log: EventLog, mask: np.ndarray, l2: float, collaborative: ranking.CollaborativeModel):
        return cls(log, mask, log_biases(log, mask, l2), collaborative)

    def columns(self, matrix: np.ndarray, events: np.ndarray) -> np.ndarray:
        """The rows with BIAS_FEATURES appended (RATING_FEATURES order)."""
        user, item, biases = self.log.user[events], self.log.item[events], self.biases
        return np.column_stack(
            [
                matrix,
                biases.user_bias[user],
                biases.item_bias[item],
                biases.predict(user=user, item=item),
                self._neighbours(user, item),
            ]
        )

    def _neighbours(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Per row: Σ_j B[j, i] r̃_uj / Σ_j |B[j, i]| and Σ_j |B[j, i]| over the modelled items j that u rated in
        `mask`, r̃ the bias residual (NaN where i is not modelled or u rated none)."""
        log, model = self.log, self.collaborative
        ratings = np.flatnonzero(self.mask & log.is_rating())
        position = model.position[log.item[ratings]]
        ratings, position = ratings[position >= 0], position[position >= 0]
        residual = log.value[ratings] - self.biases.predict(user=log.user[ratings], item=log.item[ratings])
        by_user = np.argsort(log.user[ratings], kind="stable")
        bounds = np.searchsorted(log.user[ratings][by_user], np.arange(len(log.user_pks) + 1))
        result = np.full((len(user), 2), np.nan)
        target = model.position[item]
        rows = np.flatnonzero(target >= 0)
        for u, group in _groups(user[rows]):
            mine = by_user[bounds[u] : bounds[u + 1]]
            if not len(mine):
                continue
            weights = weights_gather(model.weights, position[mine], target[rows[group]])
            total = np.abs(weights).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                result[rows[group], 0] = np.where(total > 0, residual[mine] @ weights / total, np.nan)
            result[rows[group], 1] = total
        return result


def weights_gather(weights: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """weights[np.ix_(rows, columns)] as float64. The cells of a large matrix (EASE's B: 144 MB at 6,000 items)
    read one by one cost a cache miss each, so for many columns whole rows are copied in chunks (sequential
    reads) and the columns taken from the copy: the same values at about half the time on a heavy user."""
    if len(columns) < WHOLE_ROWS_FROM_COLUMNS:
        return weights[np.ix_(rows, columns)].astype(np.float64)
    result = np.empty((len(rows), len(columns)), dtype=np.float64)
    for start in range(0, len(rows), WHOLE_ROWS_CHUNK):
        result[start : start + WHOLE_ROWS_CHUNK] = weights[rows[start : start + WHOLE_ROWS_CHUNK]][:, columns]
    return result


def _groups(values: np.ndarray):
    """(value, indexes of its rows) for each distinct value."""
    order = np.argsort(values, kind="stable")
    distinct, starts = np.unique(values[order], return_index=True)
    return zip(distinct.tolist(), np.split(order, starts[1:]))


# (rows of RATING_FEATURES, residual target, validation rows, params) -> trees with best_iteration set
ResidualTreesFit = Callable[[np.ndarray, np.ndarray, np.ndarray, TrainingParams], lgb.Booster]


def rating_model_fit(
    log: EventLog,
    split: Split,
    evaluation: Evaluation,
    params: TrainingParams,
    inner_collaborative: ranking.CollaborativeModel,
    *,
    trees_fit: ResidualTreesFit | None = None,
) -> RatingModel:
    """λ chosen on the label windows, then the residual trees, kept only if they beat the biases alone.
    `inner_collaborative`: EASE fitted on the fit portion. `trees_fit`: residual_trees_fit in this process, or
    its lightgbm.dask counterpart (retraining.ml.distributed); the biases are small and fitted here."""
    fit, label = split.fit & log.is_rating(), split.label & log.is_rating()
    l2 = bias_l2_choose(
        fit=(log.user[fit], log.item[fit], log.value[fit]),
        valid=(log.user[label], log.item[label], log.value[label]),
        n_users=len(log.user_pks),
        n_items=len(log.item_pks),
    )
    events, target = evaluation.regressor_train_events, evaluation.regressor_train_target.astype(np.float64)
    if len(target) < 4 * params.min_data_in_leaf:
        return RatingModel(KIND_BIAS, l2, None)
    context = RatingContext.fit(log, split.fit, l2, inner_collaborative)
    matrix = context.columns(evaluation.regressor_train, events)
    base = context.biases.predict(user=log.user[events], item=log.item[events])
    validation = regressor_validation_rows(len(target), params)
    booster = (trees_fit or residual_trees_fit)(
        matrix, target - base, validation, replace(params, min_rounds=MIN_RESIDUAL_ROUNDS)
    )
    with_trees = base[validation] + booster.predict(
        matrix[validation], num_iteration=booster.best_iteration, num_threads=1
    )
    if root_mean_squared_error(target[validation], with_trees) >= root_mean_squared_error(
        target[validation], base[validation]
    ):
        return RatingModel(KIND_BIAS, l2, None)
    return RatingModel(KIND_RESIDUAL, l2, booster)


def residual_trees_fit(
    matrix: np.ndarray, residual: np.ndarray, validation: np.ndarray, params: TrainingParams
) -> lgb.Booster:
    """LightGBM regression on the biases' residual, early stopping on the `validation` rows."""
    options = lgb_params(params, objective="regression", metric="rmse")
    train = lgb.Dataset(matrix[~validation], residual[~validation], feature_name=RATING_FEATURES)
    return booster_train(options, train, lgb.Dataset(matrix[validation], residual[validation], reference=train), params)


def regressor_validation_rows(n_rows: int, params: TrainingParams) -> np.ndarray:
    """The rows held aside for the rating model's early stopping and its trees-or-biases choice."""
    return np.random.default_rng(params.seed).random(n_rows) < params.validation_fraction


def rating_holdout_predict(
    model: RatingModel, context: RatingContext, evaluation: Evaluation, bounds: tuple[float, float]
) -> np.ndarray:
    """The model's clipped predictions for the evaluation's held-out ratings."""
    predicted = model.predict(
        matrix=evaluation.regressor_holdout, context=context, events=evaluation.regressor_holdout_events
    )
    return np.clip(predicted, *bounds)


def rating_bounds(ratings: np.ndarray) -> tuple[float, float]:
    """The range predictions are clipped to: the ratings seen in the log ((0, 0) without any)."""
    return (float(ratings.min()), float(ratings.max())) if len(ratings) else (0.0, 0.0)


def rating_scores(
    model: RatingModel | None,
    *,
    log: EventLog,
    split: Split,
    evaluation: Evaluation,
    collaborative: ranking.CollaborativeModel,
    bounds: tuple[float, float],
) -> dict[str, float]:
    """RMSE, MAE and R² of the model on the evaluation's held-out ratings (NaN without a model); its bias
    features from the training portion and `collaborative` (EASE fitted on it)."""
    if model is None:
        return dict.fromkeys(RATING_METRICS, math.nan)
    context = RatingContext.fit(log, split.train, model.bias_l2 if math.isfinite(model.bias_l2) else 0.0, collaborative)
    predicted = rating_holdout_predict(model, context, evaluation, bounds)
    rating = rating_metrics(actual=evaluation.regressor_holdout_target, predicted=predicted)
    return {name: rating[name] for name in RATING_METRICS}


def rating_baselines(
    log: EventLog, split: Split, evaluation: Evaluation, *, bias_l2: float, bounds: tuple[float, float]
) -> dict[str, dict]:
    """The global mean of the training ratings and the bias model (λ = `bias_l2`), on the same held-out ratings
    as the model."""
    events, actual = evaluation.regressor_holdout_events, evaluation.regressor_holdout_target
    biases = log_biases(log, split.train, bias_l2)
    predictions = {
        "global_mean": np.full(len(events), biases.mean),
        "bias": biases.predict(user=log.user[events], item=log.item[events]),
    }
    result = {}
    for name, predicted in predictions.items():
        rating = rating_metrics(actual=actual, predicted=np.clip(predicted, *bounds))
        result[name] = {key: rating[key] for key in RATING_METRICS}
    result["bias"]["l2"] = bias_l2
    return result
