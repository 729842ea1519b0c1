"""Training on a Dask cluster: the same steps as in-process, with the work that grows with events and users
spread over the workers.

- No worker holds the whole log. Users are cut into contiguous shards of about equal events (one per
  worker), each holding only its users' events; items into partitions the same way, each replaying only its
  items' events. A shard's point-in-time rows come from the same code as in-process (RankerQueries, the
  EvaluationReplay with `users`) in two halves: the shard first lists its queries' (item, time) pairs, the
  item partitions answer them with the items' states (ItemStatesAt: the same item_apply sequence per item as a
  replay of the whole log, so the same values), and the shard then replays its users' events for their states
  with the answered item states. Concatenating the shards in order gives the in-process rows, exactly. The
  ranker's earlier label windows (ranker_examples_windows) are chosen here by the in-process rule, each
  window's collaborative model fitted here and its examples built in shards.
- The ranker (lambdarank) and the rating model's residual trees are fitted by lightgbm.dask (data-parallel
  LightGBM, one process per worker), each ranker partition holding whole queries, so that no query group
  straddles two partitions. The rating model's biases (two vectors and λ) are fitted here.
  lightgbm.dask has no early stopping (each worker would see only its part of the validation set), so the
  models grow max_rounds trees and the driver applies EarlyStoppingAfter's rule to the held-aside rows
  afterwards, tree by tree: the same rule on the same rows as in-process.
- Examples and rating rows are bounded by max_ranker_users and max_regressor_examples, so the driver may
  gather them (for the validation split, the manifest and the drift reference).
Arguments travel by Dask's own serialization between the processes of one trusted cluster (numpy buffers out
of band); the ranker goes as LightGBM text, the format of the artifacts, not as a pickled booster.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.events import EventLog, ItemStatesAt, item_states_answer
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import (
    EarlyStoppingAfter,
    RankerExamples,
    RankerQueries,
    lgb_params,
    ranker_examples_windows,
    ranker_options,
    ranker_users,
    ranker_validation_split,
)
from retraining.ml.regressor import RATING_FEATURES, RatingModel, rating_model_fit
from retraining.ml.replay import Evaluation, EvaluationReplay, regressor_train_events
from retraining.ml.split import Split

CONNECT_TIMEOUT_S = 30


@contextmanager
def cluster_connect(address: str) -> Iterator[Cluster]:
    from distributed import Client  # here: the in-process path never imports Dask

    # lightgbm.dask waits on its futures through the default client
    with Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=True) as client:
        yield Cluster(client)


class Cluster:
    """A connected client and the workers it had when training started (one user shard and one item
    partition each)."""

    def __init__(self, client):
        self.client = client
        self.workers = sorted(client.scheduler_info()["workers"])
        if not self.workers:
            raise RuntimeError("the Dask cluster has no workers")

    def put(self, value, part: int):
        """`value` held by the worker of this shard or partition only."""
        return self.client.scatter(value, workers=[self.workers[part % len(self.workers)]], hash=False)

    def submit(self, function: Callable, part: int, *args, **kwargs):
        """`function` on the worker of this shard or partition (another one takes over from a worker that leaves)."""
        worker = self.workers[part % len(self.workers)]
        return self.client.submit(function, *args, pure=False, workers=[worker], allow_other_workers=True, **kwargs)


def balanced_bounds(counts: np.ndarray, parts: int) -> np.ndarray:
    """`parts` + 1 bounds cutting the codes 0..len(counts) into contiguous runs of about equal total count."""
    cuts = np.searchsorted(np.cumsum(counts), np.arange(1, parts) * counts.sum() / parts, side="right")
    return np.concatenate([[0], np.minimum(cuts, len(counts)), [len(counts)]]).astype(np.int64)


@dataclass
class UserShard:
    """The events of one contiguous run of users: `log` holds them (codes still into the whole catalogue),
    `index` their positions in the whole log."""

    log: EventLog
    index: np.ndarray


class ClusterSteps:
    """retraining.ml.steps.LocalSteps on a cluster. No worker holds the whole log:

    - users are cut into contiguous shards of about equal events, one per worker, each holding only its users'
      events (UserShard), scattered once; the shard builds its queries (candidates, rating rows) and replays
      its users' events for their states;
    - the items' point-in-time states, which depend on every user's events, are computed per item partition
      (contiguous runs of items of about equal events, one per worker, holding only those items' events) at the
      (item, time) pairs the shards ask for (ItemStatesAt), with the same item_apply sequence as a replay of
      the whole log, and each shard receives the answers to its own pairs only.

    The shards' rows, concatenated in order, are the in-process rows."""

    def __init__(self, cluster: Cluster, log: EventLog, split: Split):
        self.cluster, self.log, self.split = cluster, log, split
        parts = len(cluster.workers)
        self.user_bounds = balanced_bounds(np.bincount(log.user, minlength=len(log.user_pks)), parts)
        self.item_bounds = balanced_bounds(np.bincount(log.item, minlength=len(log.item_pks)), parts)
        shard_of_event = np.searchsorted(self.user_bounds, log.user, side="right") - 1
        self.shards = []
        for part in range(parts):
            index = np.flatnonzero(shard_of_event == part)
            self.shards.append(cluster.put(UserShard(log.subset(index), index), part))
        self.shard_splits = self._shard_splits(split)

    def _shard_splits(self, split: Split) -> list:
        return [
            self.cluster.put(_split_subset(split, np.flatnonzero(self._shard_of(self.log.user) == part)), part)
            for part in range(len(self.shards))
        ]

    def _shard_of(self, users: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.user_bounds, users, side="right") - 1

    def shard_users(self, users: np.ndarray) -> list[np.ndarray]:
        """These users (sorted) by shard, every shard's (possibly empty)."""
        users = np.sort(users)
        return np.split(users, np.searchsorted(users, self.user_bounds[1:-1]))

    def _answered(self, queries: list, portion: np.ndarray) -> tuple[list, list]:
        """Per shard, the (item, time) pairs its queries ask about and the item partitions' answers (one piece
        each, computed and cut on the partition's worker): each partition replays its items' events in `portion`
        (a mask over the log: the portion the queries replay)."""
        asked = [self.cluster.submit(_item_pairs, part, q) for part, q in enumerate(queries)]
        item_of_event = np.searchsorted(self.item_bounds, self.log.item, side="right") - 1
        answers = [
            self.cluster.submit(
                _item_states,
                part,
                self.cluster.put(self.log.subset(portion & (item_of_event == part)), part),
                asked,
                items_from=int(self.item_bounds[part]),
                items_to=int(self.item_bounds[part + 1]),
            )
            for part in range(len(self.item_bounds) - 1)
        ]
        pieces = [
            [self.cluster.submit(operator.getitem, part, answer, shard) for part, answer in enumerate(answers)]
            for shard in range(len(queries))
        ]
        return asked, pieces

    def ranker_examples(
        self, params: TrainingParams, category_share: dict, model: ranking.CollaborativeModel
    ) -> RankerExamples:
        """ranker_examples_windows (the same windows, the same stopping rule), each window's users in shards."""

        def build(window: Split, window_model: ranking.CollaborativeModel) -> RankerExamples:
            return self._window_examples(window, window_model, params, category_share)

        return ranker_examples_windows(self.log, self.split, params, category_share, model, build=build)

    def _window_examples(
        self, window: Split, model: ranking.CollaborativeModel, params: TrainingParams, category_share: dict
    ) -> RankerExamples:
        """ranker_examples_build of one window, its users in shards; concatenated in order they are its rows."""
        splits = self.shard_splits if window is self.split else self._shard_splits(window)
        model_future = self.cluster.client.scatter(model, broadcast=True, hash=False)
        queries = [
            self.cluster.submit(_ranker_queries, part, shard, split, params=params, model=model_future, users=users)
            for part, (shard, split, users) in enumerate(
                zip(self.shards, splits, self.shard_users(ranker_users(self.log, window, params)))
            )
        ]
        asked, answers = self._answered(queries, window.fit)
        parts = self.cluster.client.gather(
            [
                self.cluster.submit(
                    _ranker_examples, part, q, asked[part], answers[part], category_share=category_share
                )
                for part, q in enumerate(queries)
            ]
        )
        return RankerExamples(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ("matrix", "labels", "groups", "users"))
        )

    def evaluation(
        self,
        params: TrainingParams,
        category_share: dict,
        model: ranking.CollaborativeModel,
        ranker: lgb.Booster | None,
        *,
        with_regressor: bool,
        blend: ranking.RankerBlend = ranking.RANKER_ALONE,
    ) -> Evaluation:
        """evaluation_run per user shard; per-user results are independent, so the shards concatenate. The
        rating rows are put back in their in-process order: training rows in the log's order, held-out rows in
        the replay's (by holdout start, then user, then event), so that every sum over them is the same."""
        train_ratings = regressor_train_events(self.log, self.split, params)
        by_shard = self._shard_of(self.log.user[train_ratings])
        model_future = self.cluster.client.scatter(model, broadcast=True, hash=False)
        queries = [
            self.cluster.submit(
                _evaluation_queries,
                part,
                shard,
                split,
                params=params,
                category_share=category_share,
                model=model_future,
                ranker_text=ranker.model_to_string() if ranker is not None else None,
                blend=blend,
                with_regressor=with_regressor,
                users=np.arange(self.user_bounds[part], self.user_bounds[part + 1]),
                train_ratings=train_ratings[by_shard == part],
            )
            for part, (shard, split) in enumerate(zip(self.shards, self.shard_splits))
        ]
        asked, answers = self._answered(queries, self.split.train)
        parts = self.cluster.client.gather(
            [
                self.cluster.submit(_evaluation_finish, part, q, shard, asked[part], answers[part])
                for part, (q, shard) in enumerate(zip(queries, self.shards))
            ]
        )
        joined = {
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in (
                "users",
                "regressor_train",
                "regressor_train_target",
                "regressor_train_events",
                "regressor_holdout",
                "regressor_holdout_target",
                "regressor_holdout_events",
            )
        }
        _rows_order(joined, "regressor_train", np.argsort(joined["regressor_train_events"], kind="stable"))
        held_users = self.log.user[joined["regressor_holdout_events"]]
        _rows_order(
            joined,
            "regressor_holdout",
            np.lexsort((joined["regressor_holdout_events"], held_users, self.split.cutoff[held_users])),
        )
        names = dict.fromkeys(name for p in parts for name in p.ranked)  # a shard may have no ranked user
        return Evaluation(
            ranked={name: [codes for p in parts for codes in p.ranked.get(name, [])] for name in names},
            positives=[codes for p in parts for codes in p.positives],
            pools=[pool for p in parts for pool in p.pools],
            **joined,
        )

    def ranker_fit(self, examples: RankerExamples, params: TrainingParams) -> lgb.Booster:
        """ranker_fit: lambdarank over partitions of whole queries, early stopping applied afterwards."""
        labels, validation, rows_valid = ranker_validation_split(examples, params)
        groups = examples.groups[~validation]
        bounds = np.concatenate([[0], np.cumsum(groups)])
        matrix, target = examples.matrix[~rows_valid], labels[~rows_valid]
        partitions = [
            (matrix[bounds[p[0]] : bounds[p[-1] + 1]], target[bounds[p[0]] : bounds[p[-1] + 1]], groups[p])
            for p in np.array_split(np.arange(len(groups)), len(self.cluster.workers))
            if len(p)
        ]
        options = ranker_options(len(examples.groups), params)
        rounds = params.max_rounds if validation.any() else params.ranker_min_rounds
        booster = _dask_fit(self.cluster, "DaskLGBMRanker", options, rounds, partitions, ranking.RANKER_FEATURES)
        if validation.any():
            valid_labels, valid_groups = labels[rows_valid], examples.groups[validation]
            stopping = replace(params, min_rounds=params.ranker_min_rounds)  # as ranker_fit's early stopping
            _best_iteration_select(
                booster,
                examples.matrix[rows_valid],
                stopping,
                lambda scores: ndcg_at(scores, valid_labels, valid_groups, params.k),
            )
        return booster

    def rating_model_fit(
        self, evaluation: Evaluation, params: TrainingParams, inner_model: ranking.CollaborativeModel
    ) -> RatingModel:
        """rating_model_fit: the biases here (two vectors), the residual trees by lightgbm.dask."""
        return rating_model_fit(self.log, self.split, evaluation, params, inner_model, trees_fit=self._trees_fit)

    def _trees_fit(
        self, matrix: np.ndarray, residual: np.ndarray, validation: np.ndarray, params: TrainingParams
    ) -> lgb.Booster:
        """residual_trees_fit, early stopping on the same held-aside rows applied afterwards."""
        rows = np.array_split(np.flatnonzero(~validation), len(self.cluster.workers))
        options = lgb_params(params, objective="regression", metric="rmse")
        booster = _dask_fit(
            self.cluster,
            "DaskLGBMRegressor",
            options,
            params.max_rounds,
            [(matrix[r], residual[r], None) for r in rows if len(r)],
            RATING_FEATURES,
        )
        actual = residual[validation]
        _best_iteration_select(
            booster, matrix[validation], params, lambda predicted: -float(np.sqrt(np.mean((predicted - actual) ** 2)))
        )
        return booster


def _rows_order(joined: dict, prefix: str, order: np.ndarray) -> None:
    for name in (prefix, f"{prefix}_target", f"{prefix}_events"):
        joined[name] = joined[name][order]


def _split_subset(split: Split, index: np.ndarray) -> Split:
    """The split of these events of the log (per-event masks cut to them; per-user arrays whole)."""
    return Split(
        split.train[index], split.holdout[index], split.cutoff, split.fit[index], split.label[index], split.label_start
    )


def _item_pairs(queries) -> ItemStatesAt:
    return queries.item_pairs()


def _item_states(part: EventLog, asked: list[ItemStatesAt], *, items_from: int, items_to: int) -> list[np.ndarray]:
    """Per shard, the states of this partition's items at the pairs that shard asked about them (its pairs in
    key order, where this partition's items are one contiguous run)."""
    pairs = [a.pairs(items_from, items_to) for a in asked]
    columns = item_states_answer(part, np.concatenate([i for i, _ in pairs]), np.concatenate([t for _, t in pairs]))
    return [piece.copy() for piece in np.split(columns, np.cumsum([len(i) for i, _ in pairs])[:-1])]  # not views


def _ranker_queries(shard: UserShard, split: Split, *, params, model, users) -> RankerQueries:
    return RankerQueries(shard.log, split, params, model, users=users)


def _ranker_examples(
    queries: RankerQueries, asked: ItemStatesAt, answers: list[np.ndarray], *, category_share
) -> RankerExamples:
    return queries.examples(category_share, asked.answered(answers))


def _evaluation_queries(
    shard: UserShard,
    split: Split,
    *,
    params,
    category_share,
    model,
    ranker_text,
    blend,
    with_regressor,
    users,
    train_ratings,
) -> EvaluationReplay:
    return EvaluationReplay(
        shard.log,
        split,
        params,
        category_share=category_share,
        model=model,
        ranker=lgb.Booster(model_str=ranker_text) if ranker_text is not None else None,
        blend=blend,
        with_regressor=with_regressor,
        users=users,
        train_ratings=np.searchsorted(shard.index, train_ratings),
    )


def _evaluation_finish(
    queries: EvaluationReplay, shard: UserShard, asked: ItemStatesAt, answers: list[np.ndarray]
) -> Evaluation:
    """The shard's evaluation, its rating rows' events as positions in the whole log."""
    evaluation = queries.run(asked.answered(answers))
    evaluation.regressor_train_events = shard.index[evaluation.regressor_train_events]
    evaluation.regressor_holdout_events = shard.index[evaluation.regressor_holdout_events]
    return evaluation


def _dask_fit(
    cluster: Cluster, estimator: str, options: dict, rounds: int, partitions: list, feature_names: list[str]
) -> lgb.Booster:
    """One lightgbm.dask fit over these (matrix, target, groups) partitions, one Dask chunk each."""
    import dask
    import dask.array as da
    from lightgbm import dask as lgb_dask

    futures = [cluster.put(part, i) for i, part in enumerate(partitions)]

    def stacked(index: int, shape, dtype):
        return da.concatenate(
            [
                da.from_delayed(dask.delayed(_column)(future, index), shape=shape(part), dtype=dtype)
                for future, part in zip(futures, partitions)
            ]
        )

    width = partitions[0][0].shape[1]
    matrix = stacked(0, lambda part: (len(part[0]), width), np.float64)
    target = stacked(1, lambda part: (len(part[1]),), np.float64)
    group = stacked(2, lambda part: (len(part[2]),), np.int64) if partitions[0][2] is not None else None
    options = {key: value for key, value in options.items() if key != "num_threads"}  # each worker's own threads
    # LightGBM's workers connect to each other on ports lightgbm.dask finds free on each worker
    model = getattr(lgb_dask, estimator)(client=cluster.client, n_estimators=rounds, **options)
    extra = {"group": group} if group is not None else {}
    model.fit(matrix, target, feature_name=feature_names, **extra)
    return model.booster_


def _column(part: tuple, index: int) -> np.ndarray:
    """The matrix (0), target (1) or group sizes (2) of a scattered partition, as _dask_fit declares them."""
    return np.asarray(part[index], dtype=np.int64 if index == 2 else np.float64)


def _best_iteration_select(
    booster: lgb.Booster, matrix: np.ndarray, params: TrainingParams, score: Callable[[np.ndarray], float]
) -> None:
    """Sets booster.best_iteration by EarlyStoppingAfter's rule on `score` (higher is better) of the
    predictions after each tree, as the callback would have during training."""
    stopping = EarlyStoppingAfter(min_rounds=params.min_rounds, patience=params.early_stopping_rounds)
    raw = np.zeros(len(matrix))
    for tree in range(booster.current_iteration()):
        raw += booster.predict(matrix, start_iteration=tree, num_iteration=1, raw_score=True, num_threads=1)
        env = SimpleNamespace(iteration=tree, evaluation_result_list=[("valid", "score", score(raw), True)])
        try:
            stopping(env)
        except lgb.callback.EarlyStopException:
            break
    booster.best_iteration = stopping.best_iteration


def ndcg_at(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Mean NDCG@k over query groups as LightGBM's lambdarank metric defines it (gain 2^label - 1, log2
    discount; a group without a relevant row scores 1)."""
    query = np.repeat(np.arange(len(groups)), groups)
    starts = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(np.int64)

    def dcg(key: np.ndarray) -> np.ndarray:
        order = np.lexsort((-key, query))
        rank = np.arange(len(order)) - starts[query[order]]
        gain = np.where(rank < k, (2.0 ** labels[order] - 1.0) / np.log2(rank + 2.0), 0.0)
        return np.bincount(query[order], weights=gain, minlength=len(groups))

    ideal, actual = dcg(labels.astype(np.float64)), dcg(scores)
    return float(np.mean(np.where(ideal > 0, actual / np.where(ideal > 0, ideal, 1.0), 1.0)))
