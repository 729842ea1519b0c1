"""The small-data ranker's settings, chosen per training run on a validation split inside the training portion.

With fewer than `min_ranker_groups` queries the ranker's settings matter and no constant fits every timeline:
whether to take queries from earlier label windows, and how strongly to regularise. Each setting of
RANKER_SETTINGS is trained one level down in time — on the queries of label window 1 and before, i.e. on the
fit portion only — and scored by NDCG@10 on label window 0 (each user's last 20 % of the training portion, the
evaluation protocol's split one level down: binary gains, unseen active items, the ideal DCG over min(k, |P|)).
The best setting (the first of the list on a tie) then trains the model on window 0 and before. Nothing of the
holdout is read: its events are not in the windows, and the score uses only window 0's labels.

A large timeline (at least `min_ranker_groups` queries in window 0) has a single window and keeps the defaults
of TrainingParams, as does a run with `ranker_selection` off (a refit, which trains the gated setting again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.events import EventLog
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import RankerExamples, grades, ranker_users
from retraining.ml.split import Split

# Leaves scaled with the queries (TrainingParams' defaults), and a stronger regularisation; each with the earlier
# windows or the latest alone. On the validation windows (never the holdouts) of ml-latest-small and five small
# synthetic timelines (2026-12-01, README) two more levels were tried and dropped: the ranker's settings before
# issue 15's small-data change (31 leaves, 50 examples a leaf, at least 50 trees, no bagging) were last on all six
# and the costliest to fit; a still stronger one (7 leaves, 400 a leaf, L2 100, feature fraction 0.4, bagging
# 0.6) was below "strong" on five and level on one. Each setting tried costs one more fit per small-data run.
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
}


@dataclass
class RankerSelection:
    params: TrainingParams  # the chosen setting applied (the input params when nothing was chosen)
    chosen: str | None = None  # a key of RANKER_SETTINGS, None when there was nothing to choose on
    validation_ndcg: dict[str, float] = field(default_factory=dict)  # per setting, NDCG@k on window 0
    validation_users: int = 0
    reason: str = ""

    def manifest(self) -> dict:
        return {
            "chosen": self.chosen,
            "overrides": RANKER_SETTINGS.get(self.chosen, {}),
            "validation_ndcg@k": self.validation_ndcg,
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
    """The setting of RANKER_SETTINGS whose ranker, trained by `fit` on windows 1 and before, scores the best
    NDCG@k on window 0 of `examples` (ranker_examples_windows of `split`)."""
    if not params.ranker_selection:
        return RankerSelection(params, reason="ranker_selection is off: the given settings")
    if not (examples.windows >= 1).any():
        return RankerSelection(params, reason="one label window (a large timeline, or no earlier events)")
    validation = examples.queries(examples.windows == 0)
    n_positives, n_users = _window_positives(log, split, params, validation.users)
    scores = {}
    for name, overrides in RANKER_SETTINGS.items():
        candidate = replace(params, **overrides)
        booster = fit(examples.windows_take(first=1, params=candidate), candidate)
        scores[name] = round(_ndcg(booster, validation, n_positives, n_users, params.k), 6)
    chosen = max(scores, key=lambda name: scores[name])  # the first of the list among equals
    return RankerSelection(
        replace(params, **RANKER_SETTINGS[chosen]),
        chosen=chosen,
        validation_ndcg=scores,
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


def _ndcg(booster: lgb.Booster, validation: RankerExamples, n_positives: np.ndarray, n_users: int, k: int) -> float:
    """Mean NDCG@k over `n_users` as metrics.ranking_metrics defines it (binary gains, ideal DCG over min(k, |P|)),
    each query's candidates ranked by the booster (ties by candidate order, as ranking.top_k)."""
    scores = ranking.ranker_scores(booster, validation.matrix)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total, start = 0.0, 0
    for size, positives in zip(validation.groups.tolist(), n_positives.tolist()):
        rows = np.arange(start, start + size)
        top = ranking.top_k(rows, scores[rows], k)
        hits = validation.labels[top] > 0
        total += float(discounts[: len(top)][hits].sum()) / float(discounts[: min(k, positives)].sum())
        start += size
    return total / n_users if n_users else 0.0
