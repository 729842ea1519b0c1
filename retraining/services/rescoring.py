"""Scoring stored models on one holdout, so that a candidate and the champion are compared on the same
split, the same users and the same code path (the champion is re-scored, never compared against a number
it was given on other data)."""

from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from recommendations import ranking
from retraining.services.dataset import EventLog, event_log_load
from retraining.services.evaluation import metric_keys, ranking_metrics, rating_metrics
from retraining.services.training import Split, TrainingParams, evaluation_run, rating_predict, split_compute


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
                            after: datetime | None = None, log: EventLog | None = None) -> HoldoutScores:
    """Every model evaluated by the same replay of the same split. Items the log knows but a model does
    not (new since it was trained) are simply never its candidates. `after`: see `holdout_after`."""
    log = log if log is not None else event_log_load(until=until)
    split = split_compute(log, params)
    if after is not None:
        split = holdout_after(split, log, moment=after)
    n_active = int(log.item_active.sum())
    rated = log.value[log.is_rating()]
    low, high = (float(rated.min()), float(rated.max())) if len(rated) else (0.0, 0.0)
    scored = {}
    for name, trained in models.items():
        collaborative = collaborative_reindex(trained.collaborative, item_pks=log.item_pks, active=log.item_active)
        evaluation = evaluation_run(log, split, params, trained.category_share, collaborative, trained.ranker,
                                    with_regressor=trained.regressor is not None)
        lists, positives = evaluation.ranked.get("ranker", []), evaluation.positives  # none without a user
        metrics, popularity = (
            metric_keys(ranking_metrics(recommended=top, positives=positives, k=params.k, n_active_items=n_active),
                        params.k)
            for top in (lists, evaluation.ranked.get("popularity", []))
        )
        if trained.regressor is not None:
            predicted = rating_predict(trained.regressor, evaluation.regressor_holdout, low, high)
            rating = rating_metrics(actual=evaluation.regressor_holdout_target, predicted=predicted)
            metrics.update(rmse=rating["rmse"], mae=rating["mae"], r2=rating["r2"])
        per_user = np.array([
            ranking_metrics(recommended=[top], positives=[relevant], k=params.k, n_active_items=n_active)["ndcg"]
            for top, relevant in zip(lists, positives)
        ])
        scored[name] = Scored(metrics=metrics, popularity=popularity, user_ndcg=per_user)
    return HoldoutScores(models=scored, after=after, events=int(split.holdout.sum()), users=len(evaluation.users))


def holdout_after(split: Split, log: EventLog, *, moment: datetime) -> Split:
    """The split restricted to the held-out events strictly after `moment` (events a model trained up to
    `moment` cannot have seen). A user's earlier held-out events become known history, as they would be
    when serving, and the user is ranked at their first held-out event after `moment`: ranked at the old
    start, the items they consumed before `moment` would count as misses. Users with none drop out."""
    holdout = split.holdout & (log.ts > moment.timestamp())
    held = np.flatnonzero(holdout)
    users, first = np.unique(log.user[held], return_index=True)
    cutoff = np.full(len(log.user_pks), np.nan)
    cutoff[users] = log.ts[held[first]]
    return replace(split, train=~holdout, holdout=holdout, cutoff=cutoff)


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
