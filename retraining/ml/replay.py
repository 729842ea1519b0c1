"""The evaluation replay: one pass over the training portion that ranks every evaluated user at the start
of their holdout (the model and both baselines) and builds the rating model's rows, each strictly before
its time: the held-out ratings at the start of their user's holdout, and (to train on) the label windows'
ratings at the start of their user's label window, the same shape one level down."""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.candidates import candidates_for
from retraining.ml.events import EventLog, ItemStatesAt, StateReplay
from retraining.ml.metrics import CF_NAME, baseline_lists, candidate_order
from retraining.ml.params import TrainingParams
from retraining.ml.split import Split, histories_by_user

SCORING_BATCH = 500


@dataclass
class Evaluation:
    users: np.ndarray  # the evaluated users (codes): those with a positive held-out event on an unseen item
    ranked: dict[str, list[np.ndarray]]  # "ranker", "popularity", "ease" -> top-k per evaluated user
    positives: list[np.ndarray]
    pools: list[np.ndarray]  # per evaluated user, the candidates in the candidate stage's order (candidate_order)
    regressor_train: np.ndarray
    regressor_train_target: np.ndarray
    regressor_train_events: np.ndarray  # the log's index of each row's rating event
    regressor_holdout: np.ndarray
    regressor_holdout_target: np.ndarray
    regressor_holdout_events: np.ndarray


class EvaluationReplay:
    """One replay of the training portion answers three kinds of query, each strictly before its time:
    every evaluated user at the start of their holdout (ranking and held-out ratings), and every label-window
    rating at the start of its user's label window (the regressor's training rows). Without a ranker only the
    baselines are ranked; without `with_regressor` no rating rows are built.

    With `users` (a shard on a cluster) only those users are evaluated and only their rating events become
    rows; `log` then needs only those users' events if the items' states come to `run` as `item_states`
    (answering `item_pairs()`), and `train_ratings` are the shard's rows of regressor_train_events (indexes
    into `log`)."""

    def __init__(
        self,
        log: EventLog,
        split: Split,
        params: TrainingParams,
        *,
        category_share: dict,
        model: ranking.CollaborativeModel,
        ranker: lgb.Booster | None,
        with_regressor: bool,
        blend: ranking.RankerBlend = ranking.RANKER_ALONE,
        users: np.ndarray | None = None,
        train_ratings: np.ndarray | None = None,
    ):
        self.log, self.split, self.params = log, split, params
        self.category_share, self.model, self.ranker, self.blend = category_share, model, ranker, blend
        histories = histories_by_user(log, split.train)
        positive_holdout = split.holdout & log.positive() & log.item_active[log.item]
        self.held_users = np.flatnonzero(~np.isnan(split.cutoff))
        self.shard = (
            np.ones(len(log.user_pks), dtype=bool) if users is None else np.isin(np.arange(len(log.user_pks)), users)
        )
        self.held_users = self.held_users[self.shard[self.held_users]]
        self.positives = _positives_by_user(log, positive_holdout, histories)
        self.ranked_users = np.array([u for u in self.held_users.tolist() if len(self.positives[u])], dtype=np.int64)
        self.candidates = dict(
            zip(self.ranked_users.tolist(), candidates_for(model, histories, self.ranked_users, params))
        )
        if not with_regressor:
            train_ratings = np.empty(0, dtype=np.int64)
        elif train_ratings is None:
            train_ratings = regressor_train_events(log, split, params)
            train_ratings = train_ratings[self.shard[log.user[train_ratings]]]
        self.train_ratings = train_ratings
        # The rating rows are built per user (all of a user's rows share the label window's start): one query each.
        rating_users = log.user[train_ratings]
        by_user = np.argsort(rating_users, kind="stable")
        self.rating_users, starts = np.unique(rating_users[by_user], return_index=True)
        self.rating_rows = np.split(by_user, starts[1:]) if len(by_user) else []
        self.holdout_ratings = (
            _events_by_user(log, split.holdout & log.is_rating() & self.shard[log.user]) if with_regressor else {}
        )
        n_holdout_rows = sum(len(v) for v in self.holdout_ratings.values())
        width = len(ranking.REGRESSOR_FEATURES)
        self.regressor_train = np.empty((len(self.train_ratings), width), dtype=np.float32)
        self.regressor_holdout = np.empty((n_holdout_rows, width), dtype=np.float32)
        self.holdout_target = np.empty(n_holdout_rows, dtype=np.float32)
        self.holdout_events = np.empty(n_holdout_rows, dtype=np.int64)
        self.holdout_filled = 0
        self.ranked: dict[str, dict[int, np.ndarray]] = {"ranker": {}, "popularity": {}, CF_NAME: {}}
        self.pending: list[tuple[int, np.ndarray]] = []  # (user, feature matrix) awaiting one batched predict

    def _query_times(self) -> np.ndarray:
        """Each evaluated user's holdout start, then the label window start of each user with training rating rows."""
        return np.concatenate([self.split.cutoff[self.held_users], self.split.label_start[self.rating_users]])

    def item_pairs(self) -> ItemStatesAt:
        """The (item, time) pairs whose states `run` reads: the ranked candidates and the held-out rated items at
        their user's holdout start, each training rating's item at its user's label window start."""
        at_cutoff = [
            np.concatenate(
                [
                    self.candidates[u].codes if self.ranker is not None and u in self.candidates else [],
                    self.log.item[self.holdout_ratings.get(u, [])],
                ]
            ).astype(np.int64)
            for u in self.held_users.tolist()
        ]
        items = np.concatenate([*at_cutoff, self.log.item[self.train_ratings]]).astype(np.int64)
        times = np.concatenate(
            [
                np.repeat(self.split.cutoff[self.held_users], [len(c) for c in at_cutoff]),
                self.split.label_start[self.log.user[self.train_ratings]],
            ]
        )
        return ItemStatesAt.asked(items, times)

    def run(self, item_states: ItemStatesAt | None = None) -> Evaluation:
        log, n_users = self.log, len(self.held_users)
        self.replay = StateReplay(log.subset(self.split.train), item_states=item_states)
        self.replay.run(
            self._query_times(),
            lambda q: self._on_user(int(self.held_users[q])) if q < n_users else self._on_rating(q - n_users),
        )
        self._score_pending()
        order = self.ranked_users.tolist()
        return Evaluation(
            users=self.ranked_users,
            ranked={name: [lists[u] for u in order] for name, lists in self.ranked.items() if lists},
            positives=[self.positives[u] for u in order],
            pools=[candidate_order(self.candidates[u], popularity_rank=self.model.popularity_rank) for u in order],
            regressor_train=self.regressor_train,
            regressor_train_target=log.value[self.train_ratings].astype(np.float32),
            regressor_train_events=self.train_ratings,
            regressor_holdout=self.regressor_holdout,
            regressor_holdout_target=self.holdout_target,
            regressor_holdout_events=self.holdout_events,
        )

    def _regressor_rows(self, u: int, events: np.ndarray, at: float) -> np.ndarray:
        return ranking.regressor_feature_matrix(
            user=self.replay.user_state(u),
            items=self.replay.candidate_items(self.log.item[events]),
            at=at,
            category_share=self.category_share,
        )

    def _on_user(self, u: int) -> None:
        at = float(self.split.cutoff[u])
        events = np.asarray(self.holdout_ratings.get(u, ()), dtype=np.int64)
        if len(events):
            rows = slice(self.holdout_filled, self.holdout_filled + len(events))
            self.regressor_holdout[rows] = self._regressor_rows(u, events, at)
            self.holdout_target[rows] = self.log.value[events]
            self.holdout_events[rows] = events
            self.holdout_filled += len(events)
        if u not in self.candidates:
            return
        found = self.candidates[u]
        for name, codes in baseline_lists(found, popularity_rank=self.model.popularity_rank, k=self.params.k).items():
            self.ranked[name][u] = codes
        if self.ranker is not None:
            self.pending.append(
                (
                    u,
                    ranking.ranker_feature_matrix(
                        self.model,
                        candidates=found,
                        user=self.replay.user_state(u),
                        items=self.replay.candidate_items(found.codes),
                        at=at,
                        category_share=self.category_share,
                    ),
                )
            )
            if len(self.pending) == SCORING_BATCH:
                self._score_pending()

    def _score_pending(self) -> None:
        """One predict call for many users: LightGBM's per-call overhead would dominate 250-row calls."""
        if not self.pending:
            return
        matrix = np.concatenate([matrix for _, matrix in self.pending])
        scores = self.blend.scores(ranking.ranker_scores(self.ranker, matrix), matrix)
        start = 0
        for u, _ in self.pending:
            codes = self.candidates[u].codes
            self.ranked["ranker"][u] = ranking.top_k(codes, scores[start : start + len(codes)], self.params.k)
            start += len(codes)
        self.pending.clear()

    def _on_rating(self, query: int) -> None:
        user, rows = int(self.rating_users[query]), self.rating_rows[query]
        self.regressor_train[rows] = self._regressor_rows(
            user, self.train_ratings[rows], float(self.split.label_start[user])
        )


def regressor_train_events(log: EventLog, split: Split, params: TrainingParams) -> np.ndarray:
    """The label windows' rating events (indexes into the log), sampled down to max_regressor_examples."""
    events = np.flatnonzero(split.label & log.is_rating())
    if len(events) > params.max_regressor_examples:
        rng = np.random.default_rng(params.seed)
        events = np.sort(rng.choice(events, params.max_regressor_examples, replace=False))
    return events


def evaluation_run(
    log: EventLog,
    split: Split,
    params: TrainingParams,
    category_share: dict,
    model: ranking.CollaborativeModel,
    ranker: lgb.Booster | None,
    with_regressor: bool,
    users: np.ndarray | None = None,
    blend: ranking.RankerBlend = ranking.RANKER_ALONE,
) -> Evaluation:
    """EvaluationReplay in one call."""
    return EvaluationReplay(
        log,
        split,
        params,
        category_share=category_share,
        model=model,
        ranker=ranker,
        with_regressor=with_regressor,
        blend=blend,
        users=users,
    ).run()


def _events_by_user(log: EventLog, mask: np.ndarray) -> dict[int, list[int]]:
    result: dict[int, list[int]] = {}
    for event, u in zip(np.flatnonzero(mask).tolist(), log.user[mask].tolist()):
        result.setdefault(u, []).append(event)
    return result


def _positives_by_user(log: EventLog, mask: np.ndarray, histories: list[np.ndarray]) -> list[np.ndarray]:
    """Per user, the distinct items with a positive held-out event that the user had not seen in training
    (only those can be recommended: the protocol ranks unseen items)."""
    result = [np.empty(0, dtype=np.int64) for _ in range(len(log.user_pks))]
    for u, events in _events_by_user(log, mask).items():
        items = np.unique(log.item[events]).astype(np.int64)
        result[u] = items[~np.isin(items, histories[u])]
    return result
