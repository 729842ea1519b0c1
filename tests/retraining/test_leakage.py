"""Leakage guards: point-in-time features, shuffled labels, and a holdout that feeds nothing."""

import numpy as np
import pytest

from recommendations import features, ranking
from retraining.ml.candidates import collaborative_fit
from retraining.ml.events import EVENT_TYPES, StateReplay
from retraining.ml.params import TrainingParams
from retraining.ml.replay import evaluation_run
from retraining.ml.split import split_compute
from retraining.services.training import model_train
from tests.retraining.factories import DAY, RawEvent, dataset_with_events, event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)


def _features_at(log, model, user, at, candidates):
    """Ranker and regressor features of `user` at `at`, as the dataset builder computes them."""
    result = {}
    replay = StateReplay(log)

    def on_query(_):
        state = replay.user_state(user)
        result["ranker"] = ranking.ranker_feature_matrix(
            model,
            candidates=candidates,
            user=state,
            items=replay.candidate_items(candidates.codes),
            at=at,
            category_share=log.category_share(),
        )
        result["regressor"] = ranking.regressor_feature_matrix(
            user=state, items=replay.candidate_items(candidates.codes), at=at, category_share=log.category_share()
        )

    replay.run(np.array([at]), on_query)
    return result


def test_features_for_an_example_at_time_t_ignore_every_event_at_or_after_t():
    dataset = learnable_dataset(users=40, items=60, per_user=20)
    log = event_log_from(dataset)
    model = collaborative_fit(log=log, mask=np.ones(len(log), bool), n_modelled=50, l2=10.0)
    user = 3
    at = float(np.median(log.ts[log.user == user]))
    history = np.unique(log.item[(log.user == user) & (log.ts < at)]).astype(np.int64)
    candidates = ranking.candidates_generate(model, histories=[history], n_collaborative=20, n_popular=10)[0]
    before = _features_at(log, model, user, at, candidates)

    later = [
        RawEvent(u, int(item), kind, value, at + offset)
        for u in (user, 7)
        for item in candidates.codes[:8]
        for kind, value, offset in [("rating", 5.0, 0.0), ("purchase", None, 1.0), ("like", None, 3 * DAY)]
    ]
    after = _features_at(
        event_log_from(dataset_with_events(dataset, dataset.events + later)), model, user, at, candidates
    )

    assert np.isfinite(before["ranker"]).any()
    np.testing.assert_array_equal(before["ranker"], after["ranker"])
    np.testing.assert_array_equal(before["regressor"], after["regressor"])


def test_an_event_just_before_t_does_change_the_features():
    dataset = learnable_dataset(users=40, items=60, per_user=20)
    log = event_log_from(dataset)
    model = collaborative_fit(log=log, mask=np.ones(len(log), bool), n_modelled=50, l2=10.0)
    at = float(np.median(log.ts[log.user == 3]))
    candidates = ranking.candidates_generate(model, histories=[np.empty(0, np.int64)], n_collaborative=5, n_popular=5)[
        0
    ]
    earlier = [RawEvent(3, int(candidates.codes[0]), "rating", 5.0, at - 1.0)]
    before = _features_at(log, model, 3, at, candidates)
    after = _features_at(
        event_log_from(dataset_with_events(dataset, dataset.events + earlier)), model, 3, at, candidates
    )
    assert not np.array_equal(before["ranker"], after["ranker"], equal_nan=True)


@pytest.fixture(scope="module")
def learnable_log():
    return event_log_from(learnable_dataset())


def test_a_ranker_trained_on_shuffled_labels_is_no_better_than_popularity(learnable_log):
    honest = model_train(output_dir=None, log=learnable_log, progress=None, params=PARAMS)
    shuffled = model_train(
        output_dir=None, log=learnable_log, progress=None, params=TrainingParams(num_threads=1, shuffle_labels=True)
    )
    popularity = shuffled.baselines["popularity"]["ndcg@10"]
    assert shuffled.metrics["ndcg@10"] <= popularity + 0.03
    assert honest.metrics["ndcg@10"] > 2 * popularity


def _holdout_mutated(log):
    """The same log with every held-out event pointing at another item, with another type and value."""
    split = split_compute(log, PARAMS)
    mutated = log.subset(np.ones(len(log), bool))
    rng = np.random.default_rng(1)
    held = np.flatnonzero(split.holdout)
    mutated.item = mutated.item.copy()
    mutated.item[held] = rng.integers(0, len(log.item_pks), len(held))
    mutated.value = mutated.value.copy()
    mutated.value[held] = np.float32(5.0)
    mutated.event_type = mutated.event_type.copy()
    mutated.event_type[held] = log.event_type[log.is_rating()][0]
    return mutated, split


def test_changing_held_out_events_leaves_every_trained_model_byte_identical(learnable_log, tmp_path):
    mutated, split = _holdout_mutated(learnable_log)
    assert (mutated.item[split.holdout] != learnable_log.item[split.holdout]).any()
    first = model_train(output_dir=tmp_path / "a", log=learnable_log, progress=None, params=PARAMS)
    second = model_train(output_dir=tmp_path / "b", log=mutated, progress=None, params=PARAMS)
    for name in (ranking.RANKER_FILE, ranking.REGRESSOR_FILE, ranking.COLLABORATIVE_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    reference = first.manifest["reference_distributions"]
    assert reference == second.manifest["reference_distributions"]
    assert first.metrics != second.metrics  # the holdout did change: only the scores may move


def test_the_recommendations_scored_at_evaluation_do_not_depend_on_held_out_events(learnable_log, tmp_path):
    mutated, split = _holdout_mutated(learnable_log)
    model_train(output_dir=tmp_path, log=learnable_log, progress=None, params=PARAMS)
    trained = ranking.trained_model_load(tmp_path)
    share = learnable_log.category_share()
    lists = [
        evaluation_run(log, split, PARAMS, share, trained.collaborative, trained.ranker, with_regressor=True)
        for log in (learnable_log, mutated)
    ]
    by_user = [dict(zip(run.users.tolist(), run.ranked["ranker"])) for run in lists]
    common = by_user[0].keys() & by_user[1].keys()
    assert len(common) > 50
    for user in common:
        np.testing.assert_array_equal(by_user[0][user], by_user[1][user])
    np.testing.assert_array_equal(lists[0].regressor_train, lists[1].regressor_train)


def test_a_replay_of_some_users_gives_them_the_online_states_and_every_item_its_state():
    """The replay tracks only the users asked for and keeps only the recent items the ranker reads; what it
    keeps equals folding the same events with the online definitions."""
    log = event_log_from(learnable_dataset(users=30, items=40, per_user=16))
    tracked = np.array([2, 5, 11])
    at = float(np.median(log.ts))
    online_users = {u: features.UserState() for u in tracked.tolist()}
    online_items = [features.ItemState() for _ in log.item_pks]
    first: dict[tuple[int, int], int] = {}  # (user, item) -> the key of its first stored event
    for key, pair in zip(log.event_pk.tolist(), zip(log.user.tolist(), log.item.tolist())):
        first[pair] = min(key, first.get(pair, key))
    for i in np.flatnonzero(log.ts < at).tolist():
        u, item = int(log.user[i]), int(log.item[i])
        value = None if np.isnan(log.value[i]) else float(log.value[i])
        event = features.Event(u, int(log.item_pks[item]), EVENT_TYPES[log.event_type[i]], value, float(log.ts[i]))
        features.item_apply(online_items[item], event, first_of_user=first[u, item] == log.event_pk[i])
        if u in online_users:
            features.user_apply(online_users[u], event, log.item_categories[item])
    replay, states = StateReplay(log), {}
    replay.run(np.array([at]), lambda _: states.update({u: replay.user_state(u) for u in online_users}))
    for user, online in online_users.items():
        state = states[user]
        assert state.recent_items == online.recent_items[: ranking.RECENT_ITEMS_FOR_SIMILARITY]
        state.recent_items = online.recent_items
        assert state == online
    codes = np.arange(len(log.item_pks))
    np.testing.assert_array_equal(replay.candidate_items(codes).columns, features.item_state_columns(online_items))
