"""Training on a Dask cluster (retraining.ml.distributed) against a local cluster of two worker processes that
the tests start, compared with the in-process path on the same data."""

import os
from dataclasses import replace
from datetime import UTC, datetime

import distributed
import lightgbm as lgb
import numpy as np
import pytest
from dask.utils import key_split

from recommendations import ranking
from recommendations.serving.loading import artifact_models_check
from registry.selectors import champion_version
from retraining.ml.candidates import collaborative_fit
from retraining.ml.distributed import CHUNK_USERS, ClusterSteps, cluster_connect, ndcg_at
from retraining.ml.events import ItemStatesAt, ItemStatesReplayed, StateReplay
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import ranker_blend_fit, ranker_fit
from retraining.ml.regressor import KIND_RESIDUAL, rating_bounds, rating_scores
from retraining.ml.split import split_compute
from retraining.ml.steps import LocalSteps
from retraining.services.pipeline import training_run_process
from retraining.services.runs import training_run_request
from retraining.services.training import model_train
from tests.retraining.factories import dataset_store, event_log_from, learnable_dataset
from tests.support.dask_plugins import EventsHeld
from tests.support.processes import free_port

PARAMS = TrainingParams(num_threads=1)
# Distributed LightGBM bins each worker's share of the rows, so its trees differ slightly from the in-process
# ones. Measured on learnable_dataset seeds 0-3 (~140 evaluated users): |NDCG@10 difference| up to 0.016, recall@10
# up to 0.041, RMSE up to 1.2%; on 47k events and 800 users 0.006 and 0.03% (README "Training on a Dask cluster").
RANKING_TOLERANCE = 0.05  # absolute, on NDCG@10, recall@10, MAP@10, hit rate@10
RATING_TOLERANCE = 0.03  # relative, on RMSE and MAE


def cluster_ports() -> dict:
    """Ports for the scheduler, the workers and their nannies inside TEST_PORTS when a shared machine sets it."""
    first, _, last = os.environ.get("TEST_PORTS", "").partition("-")
    span = f"{first}:{last}" if first else 0
    return {"scheduler_port": free_port(), "worker_port": span, "port": span}


@pytest.fixture(scope="module")
def dask_cluster():
    """Two worker processes of one thread each; the scheduler's HTTP server (health, no dashboard) on a test port."""
    with distributed.LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=f"127.0.0.1:{free_port()}",
        worker_dashboard_address=None,
        **cluster_ports(),
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def log():
    return event_log_from(learnable_dataset(seed=3))


@pytest.fixture(scope="module")
def both_trained(log, dask_cluster, tmp_path_factory):
    local = model_train(output_dir=None, log=log, progress=None, params=PARAMS)
    directory = tmp_path_factory.mktemp("dask-model")
    on_cluster = model_train(output_dir=directory, log=log, progress=None, params=PARAMS, cluster=dask_cluster)
    return local, on_cluster, directory


@pytest.mark.parametrize("chunk_users", [CHUNK_USERS, 7])  # one chunk per shard; many, of unequal sizes
def test_the_cluster_builds_exactly_the_ranker_examples_built_in_process(log, dask_cluster, chunk_users):
    split = split_compute(log, PARAMS)
    model = collaborative_fit(log=log, mask=split.fit, n_modelled=PARAMS.ease_items, l2=PARAMS.ease_l2)
    expected = LocalSteps(log, split).ranker_examples(PARAMS, log.category_share(), model)
    with cluster_connect(dask_cluster) as cluster:
        steps = ClusterSteps(cluster, log, split, chunk_users=chunk_users)
        assert [len(users) > 0 for users in steps.shard_users(expected.users)] == [True, True]
        found = steps.ranker_examples(PARAMS, log.category_share(), model)
    assert len(expected.groups) > 20
    np.testing.assert_array_equal(found.groups, expected.groups)
    np.testing.assert_array_equal(found.labels, expected.labels)
    np.testing.assert_array_equal(found.matrix, expected.matrix)
    np.testing.assert_array_equal(found.users, expected.users)


def test_the_cluster_takes_the_ranker_queries_from_earlier_windows_by_the_in_process_rule(log, dask_cluster):
    params = TrainingParams(num_threads=1, min_ranker_groups=10_000, label_windows=3)  # every window is needed
    split = split_compute(log, params)
    model = collaborative_fit(log=log, mask=split.fit, n_modelled=params.ease_items, l2=params.ease_l2)
    expected = LocalSteps(log, split).ranker_examples(params, log.category_share(), model)
    with cluster_connect(dask_cluster) as cluster:
        found = ClusterSteps(cluster, log, split).ranker_examples(params, log.category_share(), model)
    assert len(expected.groups) > len(np.unique(expected.users)), "some user has queries from several windows"
    for name in ("matrix", "labels", "groups", "users"):
        np.testing.assert_array_equal(getattr(found, name), getattr(expected, name), err_msg=name)


def test_no_worker_holds_the_whole_log_and_each_user_shard_holds_only_its_users_events(log, dask_cluster):
    split = split_compute(log, PARAMS)
    model = collaborative_fit(log=log, mask=split.fit, n_modelled=PARAMS.ease_items, l2=PARAMS.ease_l2)
    with cluster_connect(dask_cluster) as cluster:
        cluster.client.register_plugin(EventsHeld())
        try:
            steps = ClusterSteps(cluster, log, split)
            steps.ranker_examples(PARAMS, log.category_share(), model)
            steps.evaluation(PARAMS, log.category_share(), model, None, with_regressor=True)
            held = cluster.client.run(lambda dask_worker: dask_worker.plugins["events-held"].logs)
        finally:
            cluster.client.unregister_worker_plugin("events-held")
    assert len(held) == 2
    shards = {}
    for worker, logs in held.items():
        events = set().union(*(set(pks) for _, pks, _ in logs))
        assert logs and len(events) < 0.8 * len(log), f"{worker} held {len(events)} of {len(log)} events"
        users = [set(shard_users) for kind, _, shard_users in logs if kind == "UserShard"]
        assert len(users) == 1, "one user shard per worker"
        shards[worker] = users[0]
    first, second = shards.values()
    assert not first & second, "no user's events are in two shards"
    assert first | second == set(log.user.tolist())


@pytest.fixture(scope="module")
def steps_inputs(log):
    """The split, category shares, in-process steps and both collaborative models (label window, training)."""
    split = split_compute(log, PARAMS)
    inner = collaborative_fit(log=log, mask=split.fit, n_modelled=PARAMS.ease_items, l2=PARAMS.ease_l2)
    model = collaborative_fit(log=log, mask=split.train, n_modelled=PARAMS.ease_items, l2=PARAMS.ease_l2)
    return split, log.category_share(), LocalSteps(log, split), inner, model


@pytest.mark.parametrize("chunk_users", [CHUNK_USERS, 7])  # one chunk per shard; many, of unequal sizes
def test_the_partitioned_evaluation_replay_ranks_and_builds_rating_rows_as_in_process(
    log, dask_cluster, steps_inputs, chunk_users
):
    split, share, local, inner, model = steps_inputs
    ranker = ranker_fit(local.ranker_examples(PARAMS, share, inner), PARAMS)
    expected = local.evaluation(PARAMS, share, model, ranker, with_regressor=True)
    with cluster_connect(dask_cluster) as cluster:
        steps = ClusterSteps(cluster, log, split, chunk_users=chunk_users)
        found = steps.evaluation(PARAMS, share, model, ranker, with_regressor=True)
    np.testing.assert_array_equal(found.users, expected.users)
    for name in ("ranker", "popularity", "ease"):
        assert [c.tolist() for c in found.ranked[name]] == [c.tolist() for c in expected.ranked[name]]
    np.testing.assert_array_equal(found.regressor_train, expected.regressor_train)
    assert [p.tolist() for p in found.pools] == [p.tolist() for p in expected.pools]
    for name in (
        "regressor_train_target",
        "regressor_train_events",
        "regressor_holdout",
        "regressor_holdout_target",
        "regressor_holdout_events",
    ):  # held-out rows come per shard and are put back in the replay's order
        np.testing.assert_array_equal(getattr(found, name), getattr(expected, name), err_msg=name)


def test_a_worker_builds_the_evaluation_queries_of_at_most_chunk_users_users_at_a_time(log, dask_cluster, steps_inputs):
    split, share, _, _, model = steps_inputs
    with cluster_connect(dask_cluster) as cluster:
        cluster.client.register_plugin(EventsHeld())
        try:
            ClusterSteps(cluster, log, split, chunk_users=9).evaluation(PARAMS, share, model, None, with_regressor=True)
            held = cluster.client.run(lambda dask_worker: dask_worker.plugins["events-held"].logs)
        finally:
            cluster.client.unregister_worker_plugin("events-held")
    chunks = [users for logs in held.values() for kind, _, users in logs if kind == "EvaluationChunk"]
    assert max(len(users) for users in chunks) <= 9
    assert sorted(u for users in chunks for u in users) == sorted(set(log.user.tolist())), "each user in one chunk"


def test_the_partitioned_evaluation_ranks_by_the_popularity_blend_as_in_process(log, dask_cluster, steps_inputs):
    split, share, local, inner, model = steps_inputs
    examples = local.ranker_examples(PARAMS, share, inner)
    ranker = ranker_fit(examples, PARAMS)
    blend = ranker_blend_fit(ranker, examples, 0.4)
    expected = local.evaluation(PARAMS, share, model, ranker, with_regressor=False, blend=blend)
    alone = local.evaluation(PARAMS, share, model, ranker, with_regressor=False)
    with cluster_connect(dask_cluster) as cluster:
        found = ClusterSteps(cluster, log, split).evaluation(
            PARAMS, share, model, ranker, with_regressor=False, blend=blend
        )
    lists = [c.tolist() for c in found.ranked["ranker"]]
    assert lists == [c.tolist() for c in expected.ranked["ranker"]]
    assert lists != [c.tolist() for c in alone.ranked["ranker"]]


def test_the_pointwise_ranker_setting_fits_on_the_cluster(log, dask_cluster, steps_inputs):
    split, share, local, inner, _ = steps_inputs
    params = replace(PARAMS, ranker_objective="binary")
    examples = local.ranker_examples(params, share, inner)
    with cluster_connect(dask_cluster) as cluster:
        booster = ClusterSteps(cluster, log, split).ranker_fit(examples, params)
    scores = ranking.ranker_scores(booster, examples.matrix)
    assert booster.dump_model()["objective"].startswith("binary") and ((scores > 0) & (scores < 1)).all()
    assert scores[examples.labels > 0].mean() > scores[examples.labels == 0].mean()


def test_the_rating_model_on_the_cluster_fits_its_residual_trees_there_and_scores_as_in_process(
    log, dask_cluster, steps_inputs
):
    split, share, local, inner, model = steps_inputs
    evaluation = local.evaluation(PARAMS, share, model, None, with_regressor=True)
    expected = local.rating_model_fit(evaluation, PARAMS, inner)
    with cluster_connect(dask_cluster) as cluster, distributed.get_task_stream(client=cluster.client) as stream:
        found = ClusterSteps(cluster, log, split).rating_model_fit(evaluation, PARAMS, inner)
    assert found.kind == expected.kind == KIND_RESIDUAL and found.bias_l2 == expected.bias_l2
    assert "train_part" in {key_split(task["key"]) for task in stream.data}, "the trees were fitted by the workers"
    bounds = rating_bounds(log.value[log.is_rating()])
    scores = {
        name: rating_scores(rating, log=log, split=split, evaluation=evaluation, collaborative=model, bounds=bounds)
        for name, rating in (("local", expected), ("cluster", found))
    }
    assert scores["cluster"]["rmse"] == pytest.approx(scores["local"]["rmse"], rel=RATING_TOLERANCE)


def test_training_on_the_cluster_gives_the_in_process_metrics_within_the_documented_tolerance(both_trained):
    local, on_cluster, _ = both_trained
    assert on_cluster.baselines == local.baselines  # the replay is exact: only the fits may differ
    for name in ("ndcg@10", "recall@10", "map@10", "hit_rate@10"):
        assert on_cluster.metrics[name] == pytest.approx(local.metrics[name], abs=RANKING_TOLERANCE), name
    for name in ("rmse", "mae"):
        assert on_cluster.metrics[name] == pytest.approx(local.metrics[name], rel=RATING_TOLERANCE), name
    assert on_cluster.metrics["ndcg@10"] > 1.5 * on_cluster.baselines["ease"]["ndcg@10"]


def test_the_cluster_models_stop_early_by_the_in_process_rule(both_trained):
    _, on_cluster, _ = both_trained
    trees = on_cluster.manifest["params"]["ranker_best_iteration"]
    assert PARAMS.ranker_min_rounds <= trees < PARAMS.max_rounds


def test_the_model_directory_trained_on_the_cluster_passes_the_serving_check_and_loads(both_trained):
    _, on_cluster, directory = both_trained
    artifact_models_check(files={path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()})
    model = ranking.trained_model_load(directory)
    assert model.ranker.num_trees() == on_cluster.manifest["params"]["ranker_best_iteration"]


def test_item_states_answered_by_an_item_partition_are_those_of_a_replay_of_the_whole_log(log):
    split = split_compute(log, PARAMS)
    rng = np.random.default_rng(0)
    half = len(log.item_pks) // 2
    times = rng.choice(split.label_start[~np.isnan(split.label_start)], 400)
    items = rng.integers(0, half, 400)
    asked = ItemStatesAt.asked(items, times)
    pair_items, pair_times = asked.pairs(0, half)
    partition = log.subset(split.fit & (log.item < half))
    columns = ItemStatesReplayed.of(partition).answer(pair_items, pair_times)
    answered = asked.answered([columns[:100], columns[100:]])  # as the pieces of two partitions

    whole = StateReplay(log.subset(split.fit))
    expected = {}
    distinct = np.unique(times)
    whole.run(distinct, lambda q: expected.update({distinct[q]: whole.item_columns(items[times == distinct[q]])}))
    assert (columns[:, 0] > 0).any(), "some items have events before their time"
    for at, columns in expected.items():
        np.testing.assert_array_equal(answered.rows(items[times == at], at), columns)
    with pytest.raises(KeyError):  # a pair nobody asked about is not guessed
        answered.rows(np.array([half]), float(times[0]))


def test_ndcg_at_k_is_lightgbms_lambdarank_metric():
    rng = np.random.default_rng(0)
    groups = rng.integers(5, 40, 60)
    matrix, labels = rng.normal(size=(groups.sum(), 4)), rng.integers(0, 3, groups.sum())
    recorded = {}
    data = lgb.Dataset(matrix, labels, group=groups)
    booster = lgb.train(
        {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "verbosity": -1, "num_threads": 1},
        data,
        num_boost_round=5,
        valid_sets=[data],
        callbacks=[lgb.record_evaluation(recorded)],
    )
    assert ndcg_at(booster.predict(matrix), labels, groups, 10) == pytest.approx(
        recorded["training"]["ndcg@10"][-1], abs=1e-6
    )


@pytest.mark.django_db
def test_with_a_scheduler_address_set_training_runs_train_and_gate_on_the_cluster_and_register(
    dask_cluster, settings, tmp_path
):
    settings.MODEL_STORE = tmp_path / "store"
    settings.DASK_SCHEDULER_ADDRESS = dask_cluster
    dataset_store(learnable_dataset(users=120, items=80, per_user=24))
    first = run_now(until=datetime(2025, 4, 21, tzinfo=UTC))  # the history runs to about May 1
    assert first.status == "promoted", (first.gate, first.error)
    assert champion_version() == first.model_version
    with (
        distributed.Client(dask_cluster, set_as_default=False) as client,
        distributed.get_task_stream(client=client) as stream,
    ):
        second = run_now(until=datetime(2025, 6, 1, tzinfo=UTC))
    assert second.status in ("promoted", "rejected"), (second.gate, second.error)
    assert second.model_version is not None and second.gate["comparison_users"] > 0
    assert second.gate["champion_version"] == first.model_version.version
    ran = [key_split(task["key"]) for task in stream.data]  # key_split drops the leading _
    assert {"ranker_examples", "item_states", "evaluation_finish", "train_part"} <= set(ran), ran
    # 2 shards each: the training's evaluation, then the candidate and the champion re-scored for the gate
    assert ran.count("evaluation_finish") == 6
    assert any("Dask cluster" in line for line in second.log)


def run_now(*, until: datetime):
    run = training_run_request(trigger="manual", data_until=until)
    training_run_process(run_id=run.pk)
    run.refresh_from_db()
    return run


def test_an_unreachable_scheduler_fails_the_training_instead_of_training_in_process(log, monkeypatch):
    from retraining.ml import distributed as on_cluster

    monkeypatch.setattr(on_cluster, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(OSError):
        model_train(output_dir=None, log=log, progress=None, params=PARAMS, cluster=f"tcp://127.0.0.1:{free_port()}")


def test_a_scheduler_address_without_a_scheme_stops_the_service_at_start_up(tmp_path):
    import sys

    from tests.reliability.test_deploy_settings import STRONG_KEY, run, service_env

    env = service_env(tmp_path, SECRET_KEY=STRONG_KEY, DASK_SCHEDULER_ADDRESS="dask-scheduler:8786")
    done = run([sys.executable, "manage.py", "check"], env)
    assert done.returncode != 0 and "DASK_SCHEDULER_ADDRESS must be a URL such as tcp://host:8786" in done.stderr
