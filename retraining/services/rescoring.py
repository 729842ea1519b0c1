"""Scoring stored models on one holdout, so that a candidate and the champion are compared on the same
split, the same users and the same code path (the champion is re-scored, never compared against a number
it was given on other data)."""

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from recommendations import ranking
from retraining.services.dataset import EventLog, event_log_load
from retraining.services.evaluation import metric_keys, ranking_metrics, rating_metrics
from retraining.services.training import TrainingParams, evaluation_run, rating_predict, split_compute


@dataclass
class Scored:
    metrics: dict  # ranking metrics at k, and rmse / mae / r2 when the model has a regressor
    user_ndcg: np.ndarray  # per evaluated user, in the same user order for every model of one call


def models_score_on_holdout(*, until: datetime | None, params: TrainingParams,
                            models: dict[str, ranking.TrainedModel], log: EventLog | None = None) -> dict[str, Scored]:
    """Every model evaluated by the same replay of the same split. Items the log knows but a model does
    not (new since it was trained) are simply never its candidates."""
    log = log if log is not None else event_log_load(until=until)
    split = split_compute(log, params)
    n_active = int(log.item_active.sum())
    rated = log.value[log.is_rating()]
    low, high = (float(rated.min()), float(rated.max())) if len(rated) else (0.0, 0.0)
    scored = {}
    for name, trained in models.items():
        collaborative = collaborative_reindex(trained.collaborative, item_pks=log.item_pks, active=log.item_active)
        evaluation = evaluation_run(log, split, params, trained.category_share, collaborative, trained.ranker,
                                    with_regressor=trained.regressor is not None)
        lists, positives = evaluation.ranked["ranker"], evaluation.positives
        metrics = metric_keys(ranking_metrics(recommended=lists, positives=positives, k=params.k,
                                              n_active_items=n_active), params.k)
        if trained.regressor is not None:
            predicted = rating_predict(trained.regressor, evaluation.regressor_holdout, low, high)
            rating = rating_metrics(actual=evaluation.regressor_holdout_target, predicted=predicted)
            metrics.update(rmse=rating["rmse"], mae=rating["mae"], r2=rating["r2"])
        per_user = np.array([
            ranking_metrics(recommended=[top], positives=[relevant], k=params.k, n_active_items=n_active)["ndcg"]
            for top, relevant in zip(lists, positives)
        ])
        scored[name] = Scored(metrics=metrics, user_ndcg=per_user)
    return scored


def collaborative_reindex(model: ranking.CollaborativeModel, *, item_pks: np.ndarray,
                          active: np.ndarray) -> ranking.CollaborativeModel:
    """The same collaborative model expressed in another catalogue's codes (by Item primary key)."""
    code_of = {int(pk): code for code, pk in enumerate(item_pks.tolist())}
    modelled_pks = model.item_pks[model.modelled].tolist()
    keep = [position for position, pk in enumerate(modelled_pks) if int(pk) in code_of]
    popularity = np.zeros(len(item_pks), dtype=np.float64)
    for old_code, pk in enumerate(model.item_pks.tolist()):
        if int(pk) in code_of:
            popularity[code_of[int(pk)]] = model.popularity[old_code]
    return ranking.CollaborativeModel(
        item_pks=np.asarray(item_pks, dtype=np.int64),
        active=np.asarray(active, dtype=bool),
        modelled=np.array([code_of[int(modelled_pks[p])] for p in keep], dtype=np.int32),
        weights=model.weights[np.ix_(keep, keep)],
        popularity=popularity,
    )
