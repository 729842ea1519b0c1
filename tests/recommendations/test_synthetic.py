import hashlib
import re
import tracemalloc
from datetime import date
from io import StringIO

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from recommendations.models import EndUser, Interaction, Item
from recommendations.services import synthetic
from recommendations.services.movielens import movielens_import
from recommendations.services.synthetic import (
    synthetic_dataset_stream,
    synthetic_dataset_write,
    synthetic_pick_probabilities,
    synthetic_positive_probabilities,
    synthetic_world,
)

USERS, ITEMS, EVENTS = 300, 600, 20_000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    output = tmp_path_factory.mktemp("synthetic")
    report = synthetic_dataset_write(output=output, users=USERS, items=ITEMS, events=EVENTS, drift_at=0.7, seed=7)
    ratings = pd.read_csv(output / "ratings.csv")
    movies = pd.read_csv(output / "movies.csv")
    return report, ratings, movies


def _genre_mix(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.Series:
    genres = movies.assign(genre=movies.genres.str.split("|")).explode("genre")[["movieId", "genre"]]
    return ratings.merge(genres, on="movieId").genre.value_counts(normalize=True)


def _total_variation(a: pd.Series, b: pd.Series) -> float:
    return 0.5 * a.sub(b, fill_value=0.0).abs().sum()


def _top_share(counts: pd.Series, share: float) -> float:
    ordered = counts.sort_values(ascending=False)
    return ordered.head(max(1, int(len(ordered) * share))).sum() / ordered.sum()


def test_the_files_have_the_csv_layout_and_the_requested_counts(dataset):
    report, ratings, movies = dataset

    assert list(ratings.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert list(movies.columns) == ["movieId", "title", "genres"]
    assert (len(ratings), ratings.userId.nunique(), len(movies)) == (EVENTS, USERS, ITEMS)
    assert (report.events, report.users, report.items) == (EVENTS, USERS, ITEMS)
    assert set(ratings.movieId) <= set(movies.movieId) == set(range(1, ITEMS + 1))


def test_each_user_rates_an_item_at_most_once(dataset):
    _, ratings, _ = dataset

    assert not ratings.duplicated(["userId", "movieId"]).any()


def test_ratings_are_half_stars_within_the_timeline(dataset):
    report, ratings, _ = dataset

    assert set(ratings.rating) <= {0.5 * step for step in range(1, 11)}
    assert 3.0 < ratings.rating.mean() < 4.0
    assert report.start.timestamp() <= ratings.timestamp.min() <= ratings.timestamp.max() < report.end.timestamp()


def test_items_have_one_to_three_of_eighteen_genres(dataset):
    _, _, movies = dataset

    genres = movies.genres.str.split("|")
    assert genres.str.len().between(1, 3).all()
    assert len(set(genres.explode())) == 18


def test_activity_and_popularity_follow_a_power_law(dataset):
    _, ratings, _ = dataset

    assert _top_share(ratings.groupby("userId").size(), 0.1) > 0.3
    assert _top_share(ratings.groupby("movieId").size(), 0.1) > 0.3


def test_ratings_come_in_sessions_of_minutes_days_apart(dataset):
    _, ratings, _ = dataset

    gaps = ratings.sort_values(["userId", "timestamp"]).groupby("userId").timestamp.diff().dropna()
    assert gaps.median() < 600
    assert 0.1 < (gaps > 86400).mean() < 0.3


def test_ratings_carry_an_item_effect_that_a_model_can_learn(dataset):
    _, ratings, _ = dataset

    halves = ratings.assign(half=ratings.userId % 2).groupby(["movieId", "half"]).rating.agg(["mean", "size"]).unstack()
    enough = (halves["size"] >= 5).all(axis=1)
    assert enough.sum() > 100
    assert np.corrcoef(halves["mean"][0][enough], halves["mean"][1][enough])[0, 1] > 0.5


def test_after_the_drift_other_items_are_popular_and_the_genre_mix_shifts(dataset):
    report, ratings, movies = dataset
    drift = report.drift_time.timestamp()
    before, after = ratings[ratings.timestamp < drift], ratings[ratings.timestamp >= drift]
    middle = before.timestamp.median()
    early, late = before[before.timestamp < middle], before[before.timestamp >= middle]

    top_before = set(before.movieId.value_counts().head(10).index)
    assert len(top_before & set(after.movieId.value_counts().head(10).index)) <= 3
    assert len(top_before & set(late.movieId.value_counts().head(10).index)) >= 6
    shift = _total_variation(_genre_mix(before, movies), _genre_mix(after, movies))
    assert shift > 3 * _total_variation(_genre_mix(early, movies), _genre_mix(late, movies))


def test_new_items_appear_only_after_the_drift(dataset):
    report, ratings, movies = dataset

    year = movies.title.str.extract(r"\((\d{4})\)$", expand=False).astype(int)
    new = set(movies.movieId[year >= report.start.year])
    assert len(new) == report.new_items > 0
    first_rated = ratings.groupby("movieId").timestamp.min()
    assert (first_rated[first_rated.index.isin(new)] >= report.drift_time.timestamp()).all()


def _before_the_drift(report, ratings: pd.DataFrame) -> pd.DataFrame:
    """The fixture's ratings before the drift, with their time in seconds from the start."""
    seconds = ratings.timestamp - report.start.timestamp()
    return ratings.assign(at=seconds)[ratings.timestamp < report.drift_time.timestamp()]


def _pick_log_likelihood(world, ratings: pd.DataFrame) -> float:
    """Mean log probability of each rated item under the world's pick rule, per user before the drift."""
    rng = np.random.default_rng(0)
    total = 0.0
    for user, rows in ratings.groupby("userId"):
        pick = synthetic_pick_probabilities(
            world, user=user - 1, at=0.0, excluded=np.empty(0, dtype=np.int64), rng=rng, samples=5_000
        )
        total += np.log(np.maximum(pick[rows.movieId.to_numpy() - 1], 1e-6)).sum()
    return total / len(ratings)


def test_the_rebuilt_world_explains_the_picks_better_than_another_seeds(dataset):
    report, ratings, _ = dataset
    early = _before_the_drift(report, ratings)
    # Light users: a heavy user's later picks are redrawn (no item twice), eventually uniformly, which the pick
    # rule of one rating leaves out.
    light = early[early.userId.map(early.userId.value_counts()) <= 30]
    light = light[light.userId <= 100]

    own = _pick_log_likelihood(synthetic_world(users=USERS, items=ITEMS, drift_at=0.7, seed=7), light)
    other = _pick_log_likelihood(synthetic_world(users=USERS, items=ITEMS, drift_at=0.7, seed=8), light)

    assert own > other + 1.0
    assert own > -np.log(ITEMS - report.new_items) + 0.5  # better than a uniform pick among the old items


def test_pick_probabilities_add_up_to_one_over_released_items_not_excluded(dataset):
    report, _, _ = dataset
    world = synthetic_world(users=USERS, items=ITEMS, drift_at=0.7, seed=7)
    excluded = np.array([0, 5, 9])

    pick = synthetic_pick_probabilities(
        world, user=3, at=0.0, excluded=excluded, rng=np.random.default_rng(1), samples=2_000
    )

    assert pick.sum() == pytest.approx(1.0)
    assert (pick[excluded] == 0).all()
    assert (pick[world.release > 0] == 0).all()  # the new items are released after the drift
    assert (world.release > 0).sum() == report.new_items


def test_positive_probabilities_match_the_share_of_ratings_of_four_or_more(dataset):
    report, ratings, _ = dataset
    early = _before_the_drift(report, ratings)
    world = synthetic_world(users=USERS, items=ITEMS, drift_at=0.7, seed=7)

    expected = np.concatenate(
        [
            synthetic_positive_probabilities(world, user=user - 1, at=0.0, threshold=4.0)[rows.movieId.to_numpy() - 1]
            for user, rows in early.groupby("userId")
        ]
    )

    assert expected.mean() == pytest.approx((early.rating >= 4.0).mean(), abs=0.02)
    assert 0.2 < expected.mean() < 0.8


def test_the_same_seed_writes_identical_files_and_another_seed_different_ones(tmp_path):
    def written(seed: int, name: str) -> tuple[bytes, bytes]:
        synthetic_dataset_write(output=tmp_path / name, users=40, items=80, events=1200, drift_at=0.5, seed=seed)
        return (tmp_path / name / "ratings.csv").read_bytes(), (tmp_path / name / "movies.csv").read_bytes()

    first = written(1, "first")

    assert written(1, "again") == first
    assert written(2, "other")[0] != first[0]


def test_the_files_are_byte_for_byte_those_written_before_the_generator_was_streamed(tmp_path):
    # sha256 of the files the generator wrote before synthetic_dataset_stream (commit e54bc1d), with the pinned
    # numpy and pandas: the demo's data set and every figure measured on synthetic data stay as they were
    synthetic_dataset_write(output=tmp_path, users=40, items=80, events=1200, drift_at=0.5, seed=1)

    assert [hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("ratings.csv", "movies.csv")] == [
        "d3eaa54497c818faa6608928103724d013458ee180d3d2ef1322d3daf9ccdd5c",
        "2b7974cb40a5617dab6de04c4f3df33e2caa8d2e434356bbfa2974b7ca335479",
    ]


def test_the_stream_yields_blocks_of_whole_users_that_make_up_the_written_file(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "BLOCK_EVENTS", 500)
    arguments = {"users": 80, "items": 100, "events": 3000, "drift_at": 0.6, "seed": 4}
    synthetic_dataset_write(output=tmp_path, **arguments)

    blocks = list(synthetic_dataset_stream(**arguments).ratings)

    assert len(blocks) >= 4
    users_per_block = [set(block.userId) for block in blocks]
    assert sum(len(users) for users in users_per_block) == len(set().union(*users_per_block)) == 80
    streamed = pd.concat(blocks, ignore_index=True)
    pd.testing.assert_frame_equal(streamed, pd.read_csv(tmp_path / "ratings.csv"))


def _stream_peak_bytes(events: int) -> int:
    tracemalloc.start()
    try:
        stream = synthetic_dataset_stream(users=1000, items=1000, events=events, drift_at=0.7, seed=1)
        assert sum(len(block) for block in stream.ratings) == events
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_generating_ten_times_the_events_takes_about_the_same_memory(monkeypatch):
    monkeypatch.setattr(synthetic, "BLOCK_EVENTS", 2000)

    small, large = _stream_peak_bytes(10_000), _stream_peak_bytes(100_000)

    assert large < 1.3 * small


@pytest.mark.django_db
def test_the_generated_dataset_imports_with_import_movielens(tmp_path):
    call_command(
        "generate_synthetic",
        *("--users", "30", "--items", "60", "--events", "600", "--drift-at", "0.6"),
        *("--output", str(tmp_path), "--seed", "3", "--start", "2021-03-01", "--days", "90"),
        stdout=StringIO(),
    )

    report = movielens_import(path=tmp_path, progress=False)

    assert (report.layout, report.events_imported, report.users_created, report.items_created) == ("csv", 600, 30, 60)
    assert (Interaction.objects.count(), EndUser.objects.count(), Item.objects.count()) == (600, 30, 60)
    first = Interaction.objects.order_by("timestamp").first().timestamp.date()
    assert date(2021, 3, 1) <= first < date(2021, 5, 30)


def test_the_command_reports_the_drift_point(tmp_path):
    out = StringIO()

    call_command(
        "generate_synthetic",
        *("--users", "10", "--items", "20", "--events", "50", "--drift-at", "0.5", "--output", str(tmp_path)),
        stdout=out,
    )

    assert re.fullmatch(
        rf"Wrote 50 ratings by 10 users of 20 items to {re.escape(str(tmp_path))} \(2020-01-01 to 2020-12-31\); "
        r"drift at 2020-07-01 12:00 UTC: \d+ users change tastes, 2 new items.\n",
        out.getvalue(),
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("--events", "5"), "between 10 and 90 events"),
        (("--events", "91"), "between 10 and 90 events"),
        (("--events", "50", "--drift-at", "1"), "fraction of the timeline in \\(0, 1\\)"),
    ],
)
def test_impossible_arguments_raise_command_error(tmp_path, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("generate_synthetic", "--users", "10", "--items", "20", "--output", str(tmp_path), *arguments)
