"""The ranker: examples at the start of each user's label window, LightGBM lambdarank, and the early
stopping (with a minimum model size) that the rating model shares."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.candidates import candidates_for, collaborative_fit
from retraining.ml.events import EventLog, ItemStatesAt, StateReplay
from retraining.ml.params import TrainingParams
from retraining.ml.split import Split, histories_by_user, split_earlier


def grades(log: EventLog) -> np.ndarray:
    """Graded relevance per event: rating 5 -> 2; other positives (rating >= 4, like, purchase) -> 1; else 0."""
    top = log.is_rating() & (log.value >= 5.0)
    return np.where(top, 2, np.where(log.positive(), 1, 0)).astype(np.int8)


@dataclass
class RankerExamples:
    matrix: np.ndarray
    labels: np.ndarray
    groups: np.ndarray  # rows per query, in order
    users: np.ndarray  # the user (code) of each query
    windows: np.ndarray | None = None  # the label window of each query: 0 the latest, 1 the one before, ...

    def __post_init__(self):
        if self.windows is None:
            self.windows = np.zeros(len(self.groups), dtype=np.int64)

    def queries(self, keep: np.ndarray) -> RankerExamples:
        """The examples of the queries where `keep` (a bool per query) holds, in order."""
        rows = np.repeat(keep, self.groups)
        return RankerExamples(
            self.matrix[rows], self.labels[rows], self.groups[keep], self.users[keep], self.windows[keep]
        )

    def windows_take(self, *, first: int, params: TrainingParams) -> RankerExamples:
        """The queries of window `first` and of up to `label_windows - 1` windows before it, stopping once
        there are `min_ranker_groups` of them: the rule by which the ranker takes earlier windows, applied
        from any window (0 for the model, 1 for the validation of a setting, see retraining.ml.tuning)."""
        counts = np.bincount(self.windows, minlength=first + params.label_windows)
        last = first
        while last + 1 < first + params.label_windows and counts[first : last + 1].sum() < params.min_ranker_groups:
            last += 1
        return self.queries((self.windows >= first) & (self.windows <= last))


def ranker_examples_windows(
    log: EventLog,
    split: Split,
    params: TrainingParams,
    category_share: dict,
    model: ranking.CollaborativeModel,
    *,
    build: Callable[[Split, ranking.CollaborativeModel], RankerExamples] | None = None,
) -> RankerExamples:
    """Queries from each user's label window at the end of the training portion and, while the latest window has
    fewer than `min_ranker_groups` of them, from earlier windows (split_earlier, up to windows_needed in all),
    each with its candidates from a collaborative model fitted on the events before it and its window number in
    `windows`. RankerExamples.windows_take picks the windows a model trains on.

    A small timeline (a few hundred users) gives one query per user: too few for lambdarank to learn more than
    noise, and the ranker then loses to most-popular. Earlier windows of the same users are more queries of
    the same kind, each point-in-time; a large timeline stops after the first window and costs nothing more.
    `model` is the collaborative model of the first window (fitted on `split.fit`). `build(window, model)`
    makes one window's examples: ranker_examples_build here, or its shards on a cluster (ClusterSteps)."""
    if build is None:

        def build(window: Split, model: ranking.CollaborativeModel) -> RankerExamples:
            return ranker_examples_build(log, window, params, category_share, model)

    parts, window = [], split
    for depth in range(windows_needed(params)):
        if not window.label.any():
            break
        if window is not split:
            model = collaborative_fit(log=log, mask=window.fit, n_modelled=params.ease_items, l2=params.ease_l2)
        part = build(window, model)
        parts.append(replace(part, windows=np.full(len(part.groups), depth, dtype=np.int64)))
        queries = sum(len(part.groups) for part in parts)
        if len(parts[0].groups) >= params.min_ranker_groups or (
            not params.ranker_selection and queries >= params.min_ranker_groups
        ):
            break
        window = split_earlier(window, log, params)
    return RankerExamples(
        *(
            np.concatenate([getattr(part, name) for part in parts])
            for name in ("matrix", "labels", "groups", "users", "windows")
        )
    )


def windows_needed(params: TrainingParams) -> int:
    """How many label windows a small timeline builds: `label_windows` for the model, and one more when its
    ranker settings are chosen on the latest window (the settings' own training then starts a window earlier)."""
    return params.label_windows + int(params.ranker_selection)


def ranker_examples_build(
    log: EventLog, split: Split, params: TrainingParams, category_share: dict, model: ranking.CollaborativeModel
) -> RankerExamples:
    """Candidates and features at the start of each user's label window, from the fit portion only."""
    return RankerQueries(log, split, params, model, users=ranker_users(log, split, params)).examples(category_share)


def ranker_users(log: EventLog, split: Split, params: TrainingParams) -> np.ndarray:
    """The users (sorted codes) with a positive event in their label window, sampled to max_ranker_users."""
    users = np.unique(log.user[split.label & (grades(log) > 0)])
    if len(users) > params.max_ranker_users:
        users = np.sort(np.random.default_rng(params.seed).choice(users, params.max_ranker_users, replace=False))
    return users


class RankerQueries:
    """The ranker's queries of some users: their candidates and labels at the start of their label windows.

    `log` needs every event of these users; `examples` replays it for their states, and for the items' states
    too unless they come as `item_states` (answering `item_pairs()`; a cluster's user shard holds only its
    users' events)."""

    def __init__(
        self, log: EventLog, split: Split, params: TrainingParams, model: ranking.CollaborativeModel, *, users
    ):
        self.log, self.split, self.model, self.users = log, split, model, users
        grade = grades(log)
        self.wanted: dict[tuple[int, int], int] = {}
        for u, it, g in zip(
            log.user[split.label].tolist(), log.item[split.label].tolist(), grade[split.label].tolist()
        ):
            self.wanted[(u, it)] = max(g, self.wanted.get((u, it), 0))
        self.candidates = candidates_for(model, histories_by_user(log, split.fit), users, params)

    def item_pairs(self) -> ItemStatesAt:
        """The (item, time) pairs whose states the examples read: each candidate at its user's label start."""
        codes = [found.codes for found in self.candidates]
        times = np.repeat(self.split.label_start[self.users], [len(c) for c in codes])
        return ItemStatesAt.asked(np.concatenate(codes) if codes else np.empty(0, np.int64), times)

    def examples(self, category_share: dict, item_states: ItemStatesAt | None = None) -> RankerExamples:
        users, split, candidates = self.users, self.split, self.candidates
        blocks: list[np.ndarray | None] = [None] * len(users)
        labels: list[np.ndarray | None] = [None] * len(users)
        replay = StateReplay(self.log.subset(split.fit), item_states=item_states)

        def on_query(index: int) -> None:
            u, found = int(users[index]), candidates[index]
            labels[index] = np.array([self.wanted.get((u, c), 0) for c in found.codes.tolist()], dtype=np.int8)
            blocks[index] = ranking.ranker_feature_matrix(
                self.model,
                candidates=found,
                user=replay.user_state(u),
                items=replay.candidate_items(found.codes),
                at=float(split.label_start[u]),
                category_share=category_share,
            )

        replay.run(split.label_start[users], on_query)
        keep = [i for i in range(len(users)) if labels[i].any()]
        return RankerExamples(
            matrix=np.concatenate([blocks[i] for i in keep]) if keep else np.empty((0, len(ranking.RANKER_FEATURES))),
            labels=np.concatenate([labels[i] for i in keep]) if keep else np.empty(0, dtype=np.int8),
            groups=np.array([len(labels[i]) for i in keep], dtype=np.int64),
            users=users[keep].astype(np.int64),
        )


def lgb_params(params: TrainingParams, **overrides) -> dict:
    return {
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": 0.9,
        "lambda_l2": 1.0,
        "num_threads": params.num_threads,
        "seed": params.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        **overrides,
    }


class EarlyStoppingAfter:
    """A LightGBM callback: early stopping on the first validation metric that only considers models of at
    least `min_rounds` trees: on a few hundred validation users NDCG is noisy enough that its peak can fall
    on the 2nd tree. `best_iteration` is the number of trees of the best model."""

    def __init__(self, *, min_rounds: int, patience: int):
        self.order = 30  # LightGBM sorts callbacks by it (read from the instance), as its own early stopping
        self.min_rounds, self.patience = min_rounds, patience
        self.best_score, self.best_iteration = -math.inf, min_rounds

    def __call__(self, env) -> None:
        trees = env.iteration + 1
        if trees < self.min_rounds or not env.evaluation_result_list:
            return
        _, _, score, higher_is_better = env.evaluation_result_list[0][:4]
        score = score if higher_is_better else -score
        if score > self.best_score:
            self.best_score, self.best_iteration = score, trees
        elif trees - self.best_iteration >= self.patience:
            raise lgb.callback.EarlyStopException(self.best_iteration - 1, env.evaluation_result_list)


def booster_train(options: dict, train: lgb.Dataset, valid: lgb.Dataset, params: TrainingParams) -> lgb.Booster:
    stopping = EarlyStoppingAfter(min_rounds=params.min_rounds, patience=params.early_stopping_rounds)
    booster = lgb.train(options, train, num_boost_round=params.max_rounds, valid_sets=[valid], callbacks=[stopping])
    booster.best_iteration = stopping.best_iteration
    return booster


def ranker_validation_split(examples: RankerExamples, params: TrainingParams) -> tuple[np.ndarray, ...]:
    """The labels to learn (graded for lambdarank, positive or not for the pointwise "binary" objective; shuffled
    for the leakage guard), which groups are held aside for early stopping
    (a share of the users, all of a user's queries on one side, so that no user's earlier window validates a
    model trained on a later one; none under 20 users), and the same per row."""
    labels = examples.labels if params.ranker_objective == "lambdarank" else (examples.labels > 0).astype(np.int8)
    if params.shuffle_labels:
        labels = np.random.default_rng(params.seed).permutation(labels)
    n_groups = len(examples.groups)
    distinct = np.unique(examples.users)
    held = np.random.default_rng(params.seed).random(len(distinct)) < params.validation_fraction
    validation = np.isin(examples.users, distinct[held]) if len(distinct) >= 20 else np.zeros(n_groups, bool)
    return labels, validation, validation[np.repeat(np.arange(n_groups), examples.groups)]


def ranker_options(n_groups: int, params: TrainingParams) -> dict:
    """LightGBM's ranker parameters for this many queries (in-process and on a cluster): `ranker_objective`,
    early stopping on NDCG@k either way."""
    return lgb_params(
        params,
        objective=params.ranker_objective,
        metric="ndcg",
        eval_at=[params.k],
        num_leaves=ranker_num_leaves(n_groups, params),
        min_data_in_leaf=params.ranker_min_data_in_leaf,
        lambda_l2=params.ranker_lambda_l2,
        feature_fraction=params.ranker_feature_fraction,
        bagging_fraction=params.ranker_bagging_fraction,
        bagging_freq=1,
    )


def ranker_fit(examples: RankerExamples, params: TrainingParams) -> lgb.Booster:
    """LightGBM lambdarank; early stopping on NDCG@k of a held-aside share of the users."""
    labels, validation, rows_valid = ranker_validation_split(examples, params)
    options = ranker_options(len(examples.groups), params)

    def dataset(rows, groups, reference=None):
        return lgb.Dataset(
            examples.matrix[rows],
            labels[rows],
            group=groups,
            feature_name=ranking.RANKER_FEATURES,
            reference=reference,
            free_raw_data=True,
        )

    train = dataset(~rows_valid, examples.groups[~validation])
    if not validation.any():
        return lgb.train(options, train, num_boost_round=params.ranker_min_rounds)
    return booster_train(
        options,
        train,
        dataset(rows_valid, examples.groups[validation], reference=train),
        replace(params, min_rounds=params.ranker_min_rounds),
    )


def ranker_blend_fit(booster: lgb.Booster, examples: RankerExamples, weight: float) -> ranking.RankerBlend:
    """The blend that gives the popularity prior a share `weight` (0: the ranker alone, 1: most-popular's order)
    once both scores are brought to one scale: each divided by its typical spread within a query (the mean
    standard deviation over the queries of `examples`, the booster's training examples). Lambdarank's scores
    have no fixed scale (it grows with the trees), so a weight chosen with one booster means the same with
    another."""
    if weight == 0.0:
        return ranking.RANKER_ALONE
    matrix = examples.matrix
    ranker_spread = _spread_within_queries(ranking.ranker_scores(booster, matrix), examples.groups)
    prior_spread = _spread_within_queries(ranking.popularity_prior(matrix), examples.groups)
    return ranking.RankerBlend(
        ranker_coefficient=(1.0 - weight) / (ranker_spread or 1.0),
        prior_coefficient=weight / (prior_spread or 1.0),
    )


def _spread_within_queries(scores: np.ndarray, groups: np.ndarray) -> float:
    """The mean over queries of the standard deviation of `scores` within each query."""
    query = np.repeat(np.arange(len(groups)), groups)
    sizes = groups.astype(np.float64)
    mean = np.bincount(query, scores, minlength=len(groups)) / sizes
    variance = np.bincount(query, (scores - mean[query]) ** 2, minlength=len(groups)) / sizes
    return float(np.sqrt(variance).mean()) if len(groups) else 0.0


def ranker_num_leaves(n_queries: int, params: TrainingParams) -> int:
    """One leaf per `ranker_queries_per_leaf` queries, between 7 and `num_leaves` (a large timeline keeps 31)."""
    return int(np.clip(n_queries // params.ranker_queries_per_leaf, 7, params.num_leaves))
