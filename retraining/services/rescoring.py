"""Scoring stored models on one holdout, so that a candidate and the champion are compared on the same
split, the same users and the same code path (the champion is re-scored, never compared against a number
it was given on other data)."""

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from recommendations import ranking
from retraining.ml.candidates import collaborative_reindex
from retraining.ml.events import EventLog
from retraining.ml.metrics import ranking_metrics, ranking_metrics_at
from retraining.ml.params import TrainingParams
from retraining.ml.regressor import rating_bounds, rating_scores
from retraining.ml.replay import Evaluation
from retraining.ml.split import holdout_after, split_compute
from retraining.services.dataset import event_log_load
from retraining.services.training import training_steps


@dataclass
class Scored:
    metrics: dict  # ranking metrics at k, and rmse / mae / r2 when the model has a regressor
    popularity: dict  # most-popular by this model's own counts, ranked for the same users
    user_ndcg: np.ndarray  # per evaluated user, in the same user order for every model of one call


@dataclass
class HoldoutScores:
    models: dict[str, Scored]
    after: datetime | None  # only held-out events strictly after this time were scored (None: all)
    events: int  # held-out events scored
    users: int  # users with a held-out positive: the users every ranking metric averages over


def models_score_on_holdout(*, until: datetime | None, params: TrainingParams, models: dict[str, ranking.TrainedModel],
                            after: datetime | None = None, log: EventLog | None = None,
                            cluster: str | None = None) -> HoldoutScores:
    """Every model evaluated by the same replay of the same split. Items the log knows but a model does
    not (new since it was trained) are simply never its candidates. `after`: see `holdout_after`. With
    `cluster` (a Dask scheduler's address) the replays run partitioned by user on that cluster."""
    log = log if log is not None else event_log_load(until=until)
    split = split_compute(log, params)
    if after is not None:
        split = holdout_after(split, log, moment=after)
    n_active = int(log.item_active.sum())
    bounds = rating_bounds(log.value[log.is_rating()])
    scored = {}
    with training_steps(log, split, cluster) as steps:
        for name, trained in models.items():
            collaborative = collaborative_reindex(trained.collaborative, item_pks=log.item_pks, active=log.item_active)
            evaluation = steps.evaluation(params, trained.category_share, collaborative, trained.ranker,
                                          with_regressor=trained.regressor is not None)
            scored[name] = _scored(evaluation, trained, params=params, n_active=n_active, bounds=bounds)
    return HoldoutScores(models=scored, after=after, events=int(split.holdout.sum()), users=len(evaluation.users))


def _scored(evaluation: Evaluation, trained: ranking.TrainedModel, *, params: TrainingParams, n_active: int,
            bounds: tuple[float, float]) -> Scored:
    lists, positives = evaluation.ranked.get("ranker", []), evaluation.positives  # none without a user
    metrics, popularity = (
        ranking_metrics_at(recommended=top, positives=positives, k=params.k, n_active_items=n_active)
        for top in (lists, evaluation.ranked.get("popularity", []))
    )
    if trained.regressor is not None:
        metrics.update(rating_scores(trained.regressor, matrix=evaluation.regressor_holdout,
                                     actual=evaluation.regressor_holdout_target, bounds=bounds))
    per_user = np.array([
        ranking_metrics(recommended=[top], positives=[relevant], k=params.k, n_active_items=n_active)["ndcg"]
        for top, relevant in zip(lists, positives)
    ])
    return Scored(metrics=metrics, popularity=popularity, user_ndcg=per_user)
