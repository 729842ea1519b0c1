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
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.events import EventLog, ItemStatesAt, ItemStatesReplayed
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
# A worker builds its shard's ranker and evaluation queries this many users at a time (two chunks in flight): a
# chunk's candidates, answered item states (80 bytes a pair, up to 130 pairs a user) and rows take ~15 MB, where a
# whole shard's grew with its users (measured at 1M events: 2,000 users held 24 MB once built).
CHUNK_USERS = 1_000


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

    def __init__(self, cluster: Cluster, log: EventLog, split: Split, *, chunk_users: int = CHUNK_USERS):
        self.cluster, self.log, self.split, self.chunk_users = cluster, log, split, chunk_users
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

    def _in_chunks(
        self, users_by_shard: list[np.ndarray], portion: np.ndarray, build: Callable, finish: Callable
    ) -> list:
        """Each shard's users (sorted) in chunks of at most `chunk_users`, so that a worker holds one or two chunks'
        candidates, item states and rows, not its whole shard's: `build(shard, users)` submits a chunk's queries on
        its shard's worker, the item partitions (replaying `portion` once) answer their pairs, and
        `finish(shard, queries, asked, answers)` submits the chunk's result. Round r holds each shard's r-th chunk;
        a round is submitted before the one before it is gathered. The results come in user order."""
        partitions = self._item_partitions(portion)
        chunks = [
            np.array_split(users, max(1, -(-len(users) // self.chunk_users))) for users in users_by_shard
        ]  # per shard
        rounds = [
            [(shard, parts[r]) for shard, parts in enumerate(chunks) if r < len(parts)]
            for r in range(max(len(parts) for parts in chunks))
        ]

        def run(round_chunks: list[tuple[int, np.ndarray]]) -> list:
            shards = [shard for shard, _ in round_chunks]
            queries = [build(shard, users) for shard, users in round_chunks]
            asked, answers = self._answered(queries, shards, partitions)
            return [finish(*arguments) for arguments in zip(shards, queries, asked, answers)]

        results = _pipelined(run, rounds, self.cluster.client.gather)
        keys = [(shard, r) for r, round_chunks in enumerate(rounds) for shard, _ in round_chunks]
        return [results[index] for index in sorted(range(len(keys)), key=keys.__getitem__)]

    def shard_users(self, users: np.ndarray) -> list[np.ndarray]:
        """These users (sorted) by shard, every shard's (possibly empty)."""
        users = np.sort(users)
        return np.split(users, np.searchsorted(users, self.user_bounds[1:-1]))

    def _item_partitions(self, portion: np.ndarray) -> list:
        """Per item partition, its items' states after each of their events in `portion` (a mask over the log:
        the portion the queries replay), computed once on the partition's worker and kept there, so that the
        shards' pairs are answered chunk after chunk by lookups, not by replaying again."""
        item_of_event = np.searchsorted(self.item_bounds, self.log.item, side="right") - 1
        return [
            self.cluster.submit(
                ItemStatesReplayed.of,
                part,
                self.cluster.put(self.log.subset(portion & (item_of_event == part)), part),
            )
            for part in range(len(self.item_bounds) - 1)
        ]

    def _answered(self, queries: list, shards: list[int], partitions: list) -> tuple[list, list]:
        """Per query set (each on the worker of its shard in `shards`), the (item, time) pairs it asks about and
        the item partitions' answers (one piece per partition, looked up on the partition's worker)."""
        asked = [self.cluster.submit(_item_pairs, shard, q) for q, shard in zip(queries, shards)]
        answers = [
            self.cluster.submit(
                _item_states,
                part,
                states,
                asked,
                items_from=int(self.item_bounds[part]),
                items_to=int(self.item_bounds[part + 1]),
            )
            for part, states in enumerate(partitions)
        ]
        pieces = [
            [self.cluster.submit(operator.getitem, part, answer, index) for part, answer in enumerate(answers)]
            for index in range(len(queries))
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

        def build(shard: int, users: np.ndarray):
            return self.cluster.submit(
                _ranker_queries,
                shard,
                self.shards[shard],
                splits[shard],
                params=params,
                model=model_future,
                users=users,
            )

        def finish(shard: int, queries, asked, answers):
            return self.cluster.submit(_ranker_examples, shard, queries, asked, answers, category_share=category_share)

        parts = self._in_chunks(self.shard_users(ranker_users(self.log, window, params)), window.fit, build, finish)
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
        """evaluation_run per chunk of a shard's users (at most `chunk_users` each, so that a worker holds one or
        two chunks' candidates, item states and rows, not its whole shard's); per-user results are independent, so
        the chunks concatenate in user order. The item partitions replay once and answer every chunk. The rating
        rows are put back in their in-process order: training rows in the log's order, held-out rows in the
        replay's (by holdout start, then user, then event), so that every sum over them is the same."""
        train_ratings = regressor_train_events(self.log, self.split, params)
        rating_users = self.log.user[train_ratings]
        shared = {
            "params": params,
            "category_share": category_share,
            "model": self.cluster.client.scatter(model, broadcast=True, hash=False),
            "ranker_text": (
                self.cluster.client.scatter(ranker.model_to_string(), broadcast=True, hash=False)
                if ranker is not None
                else None
            ),
            "blend": blend,
            "with_regressor": with_regressor,
        }

        def build(shard: int, users: np.ndarray):
            return self.cluster.submit(
                _evaluation_queries,
                shard,
                self.shards[shard],
                self.shard_splits[shard],
                users=users,
                train_ratings=train_ratings[np.isin(rating_users, users)],
                **shared,
            )

        def finish(shard: int, queries, asked, answers):
            return self.cluster.submit(_evaluation_finish, shard, queries, asked, answers)

        every_user = np.arange(len(self.log.user_pks))
        parts = self._in_chunks(self.shard_users(every_user), self.split.train, build, finish)
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


def _item_states(
    states: ItemStatesReplayed, asked: list[ItemStatesAt], *, items_from: int, items_to: int
) -> list[np.ndarray]:
    """Per query set, the states of this partition's items at the pairs it asked about them (its pairs in key
    order, where this partition's items are one contiguous run)."""
    return [states.answer(*a.pairs(items_from, items_to)) for a in asked]


def _ranker_queries(shard: UserShard, split: Split, *, params, model, users) -> RankerQueries:
    """The queries of these users of the shard, built from their events only."""
    mine = np.flatnonzero(np.isin(shard.log.user, users))
    return RankerQueries(shard.log.subset(mine), _split_subset(split, mine), params, model, users=users)


def _ranker_examples(
    queries: RankerQueries, asked: ItemStatesAt, answers: list[np.ndarray], *, category_share
) -> RankerExamples:
    return queries.examples(category_share, asked.answered(answers))


@dataclass
class EvaluationChunk:
    """The evaluation queries of a chunk of a shard's users, built from their events only (`index`: those
    events' positions in the whole log)."""

    queries: EvaluationReplay
    index: np.ndarray

    def item_pairs(self) -> ItemStatesAt:
        return self.queries.item_pairs()


def _evaluation_queries(
    shard: UserShard,
    split: Split,
    *,
    users: np.ndarray,
    params,
    category_share,
    model,
    ranker_text,
    blend,
    with_regressor,
    train_ratings,
) -> EvaluationChunk:
    """The queries of these users of the shard (sorted, contiguous codes); `train_ratings` are theirs, as positions
    in the whole log."""
    mine = np.flatnonzero(np.isin(shard.log.user, users))
    index = shard.index[mine]
    queries = EvaluationReplay(
        shard.log.subset(mine),
        _split_subset(split, mine),
        params,
        category_share=category_share,
        model=model,
        ranker=lgb.Booster(model_str=ranker_text) if ranker_text is not None else None,
        blend=blend,
        with_regressor=with_regressor,
        users=users,
        train_ratings=np.searchsorted(index, train_ratings),
    )
    return EvaluationChunk(queries, index)


def _evaluation_finish(chunk: EvaluationChunk, asked: ItemStatesAt, answers: list[np.ndarray]) -> Evaluation:
    """The chunk's evaluation, its rating rows' events as positions in the whole log."""
    evaluation = chunk.queries.run(asked.answered(answers))
    evaluation.regressor_train_events = chunk.index[evaluation.regressor_train_events]
    evaluation.regressor_holdout_events = chunk.index[evaluation.regressor_holdout_events]
    return evaluation


def _pipelined(run: Callable[[list], list], rounds: list[list], gather: Callable[[list], list]) -> list:
    """`run` each round's items (it returns their futures) and gather the results in order, the next round
    submitted before the last one is gathered, so that at most two rounds are held at a time."""
    results: list = []
    in_flight: deque = deque()
    for items in rounds:
        in_flight.append(run(items))
        if len(in_flight) > 1:
            results.extend(gather(in_flight.popleft()))
    while in_flight:
        results.extend(gather(in_flight.popleft()))
    return results


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
                da.from_delayed(dask.delayed(_column)(future, index, dtype), shape=shape(part), dtype=dtype)
                for future, part in zip(futures, partitions)
            ]
        )

    width = partitions[0][0].shape[1]
    # the matrix keeps its dtype (float32 features): LightGBM reads float32 and float64 as the same doubles
    matrix = stacked(0, lambda part: (len(part[0]), width), partitions[0][0].dtype)
    target = stacked(1, lambda part: (len(part[1]),), np.float64)
    group = stacked(2, lambda part: (len(part[2]),), np.int64) if partitions[0][2] is not None else None
    options = {key: value for key, value in options.items() if key != "num_threads"}  # each worker's own threads
    # LightGBM's workers connect to each other on ports lightgbm.dask finds free on each worker
    model = getattr(lgb_dask, estimator)(client=cluster.client, n_estimators=rounds, **options)
    extra = {"group": group} if group is not None else {}
    model.fit(matrix, target, feature_name=feature_names, **extra)
    return model.booster_


def _column(part: tuple, index: int, dtype) -> np.ndarray:
    """The matrix (0), target (1) or group sizes (2) of a scattered partition, of the dtype _dask_fit declares."""
    return np.asarray(part[index], dtype=dtype)


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
