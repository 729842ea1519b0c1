"""bench/oracle_bound.py on a tiny timeline: the oracle's ranking uses the generator's probabilities, so on the same
held-out events it beats most-popular, both collaborative baselines and the trained ranker."""

from dataclasses import replace

import pytest

from tests.support.bench import bench_module


@pytest.fixture(scope="module")
def oracle_bound():
    return bench_module("oracle_bound")


def test_on_a_tiny_timeline_the_oracle_beats_every_baseline_and_the_ranker(oracle_bound, tmp_path):
    training = oracle_bound.TrainingParams(num_threads=1)

    row = oracle_bound.oracle_bound("synthetic:150:300:8000:0.7:5", tmp_path, params=training, with_ranker=True)

    assert row["users"] > 50
    for model in ("popularity", "ease", "itemknn", "ranker"):
        assert row["oracle_positive_all"] > row[model]
        assert row["oracle_positive_candidates"] > row[model]
    assert row["oracle_choice_all"] > row["popularity"]
    assert row["oracle_positive_all"] > row["genre_popularity"]
    assert set(row["genre_tilt_validation"]) == {str(tilt) for tilt in oracle_bound.GENRE_TILTS}
    assert row["genre_tilt"] in oracle_bound.GENRE_TILTS


def test_held_out_events_in_one_state_of_the_world_share_one_time(oracle_bound):
    world = oracle_bound.synthetic_world(users=5, items=40, drift_at=0.5, seed=3)
    before = [10.0, 20.0, 30.0]
    after = world.drift + 0.1 * (world.span - world.drift) + oracle_bound.np.array([1.0, 2.0])  # all new items out

    moments = oracle_bound._distinct_moments(world, oracle_bound.np.array([*before, *after.tolist()]))

    assert moments.tolist() == [10.0] * 3 + [after[0]] * 2


def test_the_genre_tilt_is_chosen_without_reading_the_holdout(oracle_bound, tmp_path):
    synthetic = oracle_bound.SyntheticSpec.parse("synthetic:100:200:5000:0.7:4")
    log = oracle_bound.event_log_read(synthetic.write(tmp_path), synthetic.share)
    training = oracle_bound.TrainingParams(num_threads=1)
    split = oracle_bound.split_compute(log, training)
    rewritten = log.item.copy()
    rewritten[split.holdout] = oracle_bound.np.random.default_rng(0).permutation(rewritten[split.holdout])
    trapped = replace(log, item=rewritten)

    chosen = oracle_bound.genre_popularity(log, split, training)
    with_trap = oracle_bound.genre_popularity(trapped, oracle_bound.split_compute(trapped, training), training)

    assert with_trap["genre_tilt_validation"] == chosen["genre_tilt_validation"]
    assert with_trap["genre_tilt"] == chosen["genre_tilt"]
    assert with_trap["genre_popularity"] != chosen["genre_popularity"]  # the holdout itself did change
