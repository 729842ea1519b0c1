"""Scoring stored models on one holdout, so that a candidate and the champion are compared on the same
split, the same users and the same code path (the champion is re-scored, never compared against a number
it was given on other data)."""

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from recommendations import ranking
from retraining.ml.candidates import collaborative_reindex
from retraining.ml.events import EventLog
from retraining.ml.metrics import CF_NAME, candidate_recall, ranking_metrics, ranking_metrics_at
from retraining.ml.params import TrainingParams
from retraining.ml.regressor import rating_baselines, rating_bounds, rating_model_of, rating_scores
from retraining.ml.segments import segment_names, segments_table, user_history_counts
from retraining.ml.split import holdout_after, split_compute
from retraining.services.dataset import event_log_load
from retraining.services.training import training_steps


@dataclass
class Scored:
    metrics: dict  # ranking metrics at k, and rmse / mae / r2 when the model has a regressor
    popularity: dict  # most-popular by this model's own counts, ranked for the same users
    user_ndcg: np.ndarray  # per evaluated user, in the same user order for every model of one call
    ease: dict = field(default_factory=dict)  # the collaborative model alone, ranked for the same users


@dataclass
class HoldoutScores:
    models: dict[str, Scored]
    after: datetime | None  # only held-out events strictly after this time were scored (None: all)
    events: int  # held-out events scored
    users: int  # users with a held-out positive: the users every ranking metric averages over
    rating_baselines: dict  # {"global_mean": {rmse, mae, r2}, "bias": {...}} on the same held-out ratings
    user_segments: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))  # aligned with user_ndcg
    segments: dict = field(default_factory=dict)  # segments_table: every model, and the first model's baselines


def models_score_on_holdout(
    *,
    until: datetime | None,
    params: TrainingParams,
    models: dict[str, ranking.TrainedModel],
    after: datetime | None = None,
    log: EventLog | None = None,
    cluster: str | None = None,
) -> HoldoutScores:
    """Every model evaluated by the same replay of the same split. Items the log knows but a model does
    not (new since it was trained) are simply never its candidates. `after`: see `holdout_after`. With
    `cluster` (a Dask scheduler's address) the replays run partitioned by user on that cluster."""
    log = log if log is not None else event_log_load(until=until)
    split = split_compute(log, params)
    if after is not None:
        split = holdout_after(split, log, moment=after)
    n_active = int(log.item_active.sum())
    bounds = rating_bounds(log.value[log.is_rating()])
    scored, ranked, baselines = {}, {}, {}
    with training_steps(log, split, cluster) as steps:
        for name, trained in models.items():
            rating_model = rating_model_of(booster=trained.regressor, manifest=trained.manifest)
            collaborative = collaborative_reindex(trained.collaborative, item_pks=log.item_pks, active=log.item_active)
            evaluation = steps.evaluation(
                params,
                trained.category_share,
                collaborative,
                trained.ranker,
                with_regressor=rating_model is not None,
                blend=trained.blend,
            )
            lists, positives = evaluation.ranked.get("ranker", []), evaluation.positives  # none without a user
            metrics, popularity, ease = (
                ranking_metrics_at(recommended=top, positives=positives, k=params.k, n_active_items=n_active)
                for top in (lists, evaluation.ranked.get("popularity", []), evaluation.ranked.get(CF_NAME, []))
            )
            metrics.update(candidate_recall(pools=evaluation.pools, positives=positives))
            if rating_model is not None:
                metrics.update(
                    rating_scores(
                        rating_model,
                        log=log,
                        split=split,
                        evaluation=evaluation,
                        collaborative=collaborative,
                        bounds=bounds,
                    )
                )
                if not baselines and rating_model.kind != "direct":  # the first model's λ (the candidate's, by order)
                    baselines = rating_baselines(log, split, evaluation, bias_l2=rating_model.bias_l2, bounds=bounds)
            per_user = np.array(
                [
                    ranking_metrics(recommended=[top], positives=[relevant], k=params.k, n_active_items=n_active)[
                        "ndcg"
                    ]
                    for top, relevant in zip(lists, positives)
                ]
            )
            scored[name] = Scored(metrics=metrics, popularity=popularity, user_ndcg=per_user, ease=ease)
            baseline_lists = {} if ranked else {b: evaluation.ranked.get(b, []) for b in ("popularity", CF_NAME)}
            ranked = {**ranked, name: lists, **baseline_lists}
    segments = segment_names(user_history_counts(log, split, users=evaluation.users))
    return HoldoutScores(
        models=scored,
        after=after,
        events=int(split.holdout.sum()),
        users=len(evaluation.users),
        rating_baselines=baselines,
        user_segments=segments,
        segments=segments_table(lists=ranked, positives=evaluation.positives, segments=segments, k=params.k),
    )
