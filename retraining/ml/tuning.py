"""The small-data ranker's settings, chosen per training run on a validation split inside the training portion.

With fewer than `min_ranker_groups` queries the ranker's settings matter and no constant fits every timeline:
whether to take queries from earlier label windows, how strongly to regularise, which objective, and how much
of the popularity prior to blend in. Each setting of RANKER_SETTINGS is trained one level down in time — on the
queries of label window 1 and before, i.e. on the fit portion only — and scored, blended with each weight of
POPULARITY_WEIGHTS, by NDCG@10 on label window 0 (each user's last 20 % of the training portion, the evaluation
protocol's split one level down: binary gains, unseen active items, the ideal DCG over min(k, |P|)). The best
(setting, weight) pair (the first setting, then the smallest weight, on a tie) then trains the model on window 0
and before, and the weight is blended in with that model's own scale (ranker.ranker_blend_fit). Nothing of the
holdout is read: its events are not in the windows, and the score uses only window 0's labels.

A large timeline (at least `min_ranker_groups` queries in window 0) has a single window and keeps the defaults
of TrainingParams (no blend), as does a run with `ranker_selection` off (a refit, which trains the gated setting
and weight again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.events import EventLog
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import RankerExamples, grades, ranker_blend_fit, ranker_users
from retraining.ml.split import Split

# Leaves scaled with the queries (TrainingParams' defaults), and a stronger regularisation; each with the earlier
# windows or the latest alone. On the validation windows (never the holdouts) of ml-latest-small and five small
# synthetic timelines (2026-12-01, README) two more levels were tried and dropped: the ranker's settings before
# issue 15's small-data change (31 leaves, 50 examples a leaf, at least 50 trees, no bagging) were last on all six
# and the costliest to fit; a still stronger one (7 leaves, 400 a leaf, L2 100, feature fraction 0.4, bagging
# 0.6) was below "strong" on five and level on one. Each setting tried costs one more fit per small-data run.
# "binary": a pointwise objective (is the candidate a positive?) instead of lambdarank. Lambdarank learns from
# pairs within a query, a few per query with one to three positives among ~130 candidates; with a few hundred
# queries those gradients are noisy, and a pointwise log-loss over every row is the lower-variance estimate of
# the same order. Added with the popularity blend (2026-12-01), compared on 16 synthetic timelines not used
# before (seeds 20-27, README): it is chosen on most of the 200-user ones, where lambdarank lost to most-popular.
_SCALED: dict = {}
_STRONG = {
    "ranker_queries_per_leaf": 300,
    "ranker_min_data_in_leaf": 200,
    "ranker_lambda_l2": 30.0,
    "ranker_feature_fraction": 0.5,
    "ranker_bagging_fraction": 0.7,
}
RANKER_SETTINGS: dict[str, dict] = {
    "scaled, earlier windows": _SCALED,
    "scaled, latest window": _SCALED | {"label_windows": 1},
    "strong, earlier windows": _STRONG,
    "strong, latest window": _STRONG | {"label_windows": 1},
    "binary, earlier windows": {"ranker_objective": "binary"},
    "binary strong, earlier windows": _STRONG | {"ranker_objective": "binary"},
}


# The popularity prior's share in the ranking score (ranker.ranker_blend_fit), chosen with the setting: with a few
# hundred queries lambdarank learns the users' tastes noisily, and most-popular's order is the strongest prior a
# small timeline has; 0 is the ranker alone, 1 most-popular's order among the candidates. Each weight is scored
# with each setting's booster (no more fits); a coarse grid, since the validation windows are small.
POPULARITY_WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class RankerSelection:
    params: TrainingParams  # the chosen setting applied (the input params when nothing was chosen)
    chosen: str | None = None  # a key of RANKER_SETTINGS, None when there was nothing to choose on
    validation_ndcg: dict[str, float] = field(default_factory=dict)  # per setting, its best NDCG@k on window 0
    validation_ndcg_by_weight: dict[str, dict[str, float]] = field(default_factory=dict)  # per setting and weight
    validation_users: int = 0
    reason: str = ""

    def manifest(self) -> dict:
        return {
            "chosen": self.chosen,
            "overrides": RANKER_SETTINGS.get(self.chosen, {}),
            "popularity_weight": self.params.ranker_popularity_weight,
            "validation_ndcg@k": self.validation_ndcg,
            "validation_ndcg@k_by_popularity_weight": self.validation_ndcg_by_weight,
            "validation_users": self.validation_users,
            "reason": self.reason,
        }


def ranker_setting_select(
    examples: RankerExamples,
    *,
    log: EventLog,
    split: Split,
    params: TrainingParams,
    fit: Callable[[RankerExamples, TrainingParams], lgb.Booster],
) -> RankerSelection:
    """The setting of RANKER_SETTINGS and the weight of POPULARITY_WEIGHTS whose ranker, trained by `fit` on
    windows 1 and before and blended with the popularity prior, scores the best NDCG@k on window 0 of `examples`
    (ranker_examples_windows of `split`); the first setting, then the smallest weight, among equals."""
    if not params.ranker_selection:
        return RankerSelection(params, reason="ranker_selection is off: the given settings")
    if not (examples.windows >= 1).any():
        return RankerSelection(params, reason="one label window (a large timeline, or no earlier events)")
    validation = examples.queries(examples.windows == 0)
    n_positives, n_users = _window_positives(log, split, params, validation.users)
    scores: dict[str, dict[str, float]] = {}
    for name, overrides in RANKER_SETTINGS.items():
        candidate = replace(params, **overrides)
        trained_on = examples.windows_take(first=1, params=candidate)
        booster = fit(trained_on, candidate)
        raw = ranking.ranker_scores(booster, validation.matrix)
        scores[name] = {
            str(weight): round(
                _ndcg(
                    ranker_blend_fit(booster, trained_on, weight).scores(raw, validation.matrix),
                    validation,
                    n_positives,
                    n_users,
                    params.k,
                ),
                6,
            )
            for weight in POPULARITY_WEIGHTS
        }
    options = [(name, weight) for name in scores for weight in scores[name]]
    chosen, weight = max(options, key=lambda option: scores[option[0]][option[1]])  # the first among equals
    return RankerSelection(
        replace(params, **RANKER_SETTINGS[chosen], ranker_popularity_weight=float(weight)),
        chosen=chosen,
        validation_ndcg={name: max(by_weight.values()) for name, by_weight in scores.items()},
        validation_ndcg_by_weight=scores,
        validation_users=n_users,
        reason="the best NDCG@k on the latest label window, trained on the windows before it",
    )


def _window_positives(log: EventLog, split: Split, params: TrainingParams, users: np.ndarray) -> tuple[np.ndarray, int]:
    """Per query user, the protocol's positives in window 0 (distinct active items with a positive label
    event, unseen in the fit portion), and how many of the window's users have any: the users the protocol
    scores, including those whose candidates hold none of their positives (they score 0)."""
    n_items = np.int64(len(log.item_pks))
    positive = split.label & (grades(log) > 0) & log.item_active[log.item]
    seen = np.unique(log.user[split.fit] * n_items + log.item[split.fit])
    pairs = np.unique(log.user[positive] * n_items + log.item[positive])
    counts = np.bincount(pairs[~np.isin(pairs, seen)] // n_items, minlength=len(log.user_pks))
    scored = np.zeros(len(counts), dtype=bool)
    scored[ranker_users(log, split, params)] = True
    counts = np.where(scored, counts, 0)
    return counts[users], int((counts > 0).sum())


def _ndcg(scores: np.ndarray, validation: RankerExamples, n_positives: np.ndarray, n_users: int, k: int) -> float:
    """Mean NDCG@k over `n_users` as metrics.ranking_metrics defines it (binary gains, ideal DCG over min(k, |P|)),
    each query's candidates ranked by `scores` (ties by candidate order, as ranking.top_k)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total, start = 0.0, 0
    for size, positives in zip(validation.groups.tolist(), n_positives.tolist()):
        rows = np.arange(start, start + size)
        top = ranking.top_k(rows, scores[rows], k)
        hits = validation.labels[top] > 0
        total += float(discounts[: len(top)][hits].sum()) / float(discounts[: min(k, positives)].sum())
        start += size
    return total / n_users if n_users else 0.0
