import shutil
from collections import defaultdict
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from recommendations import features
from recommendations.models import EndUser, Interaction, Item, ItemFeatures, UserFeatures
from recommendations.services import movielens
from recommendations.services.events import EventInput, event_ingest
from recommendations.services.movielens import movielens_import
from recommendations.services.online_features import item_state_from_row
from tests.recommendations.test_online_features import first_event_of_each_pair

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MINI_100K = FIXTURES / "movielens-100k-mini"
MINI_1M = FIXTURES / "movielens-1m-mini"
MINI_CSV = FIXTURES / "movielens-csv-mini"
LAYOUTS = [
    pytest.param(MINI_100K, "100k", id="100k"),
    pytest.param(MINI_1M, "1m", id="1m"),
    pytest.param(MINI_CSV, "csv", id="csv"),
]
ML_LATEST_SMALL = Path(settings.BASE_DIR).parent / "shared/datasets/ml-latest-small"


def _imported(path: Path) -> str:
    out = StringIO()
    call_command("import_movielens", str(path), "--no-progress", stdout=out, stderr=StringIO())
    return out.getvalue()


def _replayed_states() -> tuple[dict[int, features.UserState], dict[int, features.ItemState]]:
    categories = dict(Item.objects.values_list("pk", "categories"))
    users: dict[int, features.UserState] = defaultdict(features.UserState)
    items: dict[int, features.ItemState] = defaultdict(features.ItemState)
    events = Interaction.objects.order_by("timestamp", "pk").values_list(
        "pk", "user_id", "item_id", "event_type", "value", "timestamp"
    )
    first = first_event_of_each_pair()
    for pk, user_id, item_id, event_type, value, timestamp in events:
        event = features.Event(user_id, item_id, event_type, value, timestamp.timestamp())
        features.user_apply(users[user_id], event, categories[item_id])
        features.item_apply(items[item_id], event, first_of_user=pk in first)
    return dict(users), dict(items)


def _assert_online_features_equal_the_replay() -> None:
    users, items = _replayed_states()
    assert {row.user_id: row.state() for row in UserFeatures.objects.all()} == users
    assert {row.item_id: item_state_from_row(row) for row in ItemFeatures.objects.all()} == items


@pytest.mark.parametrize("path, layout", LAYOUTS)
def test_each_layout_is_detected_and_imported_with_its_counts(path, layout):
    report = movielens_import(path=path, progress=False)

    assert (report.layout, report.items_created, report.items_updated) == (layout, 11, 0)
    assert (report.users_created, report.events_imported, report.duplicates_skipped) == (4, 40, 0)
    assert report.invalid_lines == 0
    assert sorted(EndUser.objects.values_list("external_id", flat=True)) == ["1", "2", "3", "4"]
    assert sorted(Item.objects.values_list("external_id", flat=True), key=int) == [str(i) for i in range(1, 12)]
    assert Interaction.objects.filter(event_type="rating").count() == 40


@pytest.mark.parametrize("path, layout", LAYOUTS)
def test_movies_become_items_with_genres_year_and_latin1_titles(path, layout):
    movielens_import(path=path, progress=False)

    cafe = Item.objects.get(external_id="3")
    assert cafe.title == "Café Müller (1993)"
    assert cafe.categories == ["Comedy", "Romance"]
    assert cafe.attributes["year"] == 1993
    assert cafe.attributes["source"] == "movielens"
    children = "Children" if layout == "csv" else "Children's"
    assert Item.objects.get(external_id="1").categories == ["Animation", children, "Comedy"]
    assert Item.objects.get(external_id="6").title == "River Songs (Canções do Rio) (1995)"


@pytest.mark.parametrize("path, layout", LAYOUTS)
def test_a_rating_of_a_movie_missing_from_the_movie_file_creates_a_bare_item(path, layout):
    movielens_import(path=path, progress=False)

    bare = Item.objects.get(external_id="11")
    assert (bare.title, bare.categories, bare.interactions.get().user.external_id) == ("", [], "4")


@pytest.mark.parametrize(
    "path, movie, value",
    [
        pytest.param(MINI_100K, "6", 1.0, id="100k"),
        pytest.param(MINI_1M, "3", 5.0, id="1m"),
        pytest.param(MINI_CSV, "2", 3.0, id="csv"),
    ],
)
def test_ratings_become_rating_events_with_their_original_utc_timestamps(path, movie, value):
    movielens_import(path=path, progress=False)

    first = Interaction.objects.filter(user__external_id="1").order_by("timestamp").first()
    assert (first.item.external_id, first.event_type, first.value) == (movie, "rating", value)
    assert first.timestamp == datetime(1997, 11, 21, 8, 13, 20, tzinfo=UTC)
    assert first.timestamp.timestamp() == 880100000


def test_csv_titles_with_quoted_commas_and_no_genres_listed_are_read():
    movielens_import(path=MINI_CSV, progress=False)

    assert Item.objects.get(external_id="4").title == "Long Road Home, The (1995)"
    assert Item.objects.get(external_id="10").categories == []


def test_a_100k_movie_without_a_year_in_its_title_takes_the_year_of_its_release_date():
    movielens_import(path=MINI_100K, progress=False)

    play = Item.objects.get(external_id="10")
    assert (play.title, play.attributes["year"]) == ("Untitled Stage Play", 1996)
    assert play.attributes["imdb_url"] == "http://us.imdb.com/M/title-exact?10"


@pytest.mark.parametrize(
    "path, user, attributes",
    [
        pytest.param(MINI_100K, "4", {"age": 33, "gender": "F", "occupation": "artist", "zip": "E2A4H"}, id="100k"),
        pytest.param(
            MINI_1M,
            "1",
            {"age": 1, "age_group": "Under 18", "gender": "F", "occupation": "K-12 student", "zip": "10001"},
            id="1m",
        ),
        pytest.param(MINI_CSV, "1", {}, id="csv"),
    ],
)
def test_demographics_become_user_attributes_where_present(path, user, attributes):
    movielens_import(path=path, progress=False)

    assert EndUser.objects.get(external_id=user).attributes == attributes


@pytest.mark.parametrize("path, layout", LAYOUTS)
def test_a_second_import_adds_nothing(path, layout):
    movielens_import(path=path, progress=False)
    report = movielens_import(path=path, progress=False)

    assert (report.items_created, report.items_updated, report.users_created) == (0, 10, 0)
    assert (report.events_imported, report.duplicates_skipped) == (0, 40)
    assert (Item.objects.count(), EndUser.objects.count(), Interaction.objects.count()) == (11, 4, 40)
    _assert_online_features_equal_the_replay()


@pytest.mark.parametrize("path, layout", LAYOUTS)
def test_online_features_after_import_equal_the_replay_of_the_shared_definitions(path, layout):
    movielens_import(path=path, progress=False)

    _assert_online_features_equal_the_replay()
    item = ItemFeatures.objects.get(item__external_id="3")
    ratings = Interaction.objects.filter(item__external_id="3")
    assert item.event_count == item.rating_count == ratings.count() == 4
    assert item.rating_sum == sum(ratings.values_list("value", flat=True))
    assert UserFeatures.objects.get(user__external_id="4").rating_count == 10


def test_online_features_include_the_events_that_users_had_before_the_import():
    view = EventInput(user_id="1", item_id="3", event_type="view", timestamp=datetime(2020, 1, 1, tzinfo=UTC))
    event_ingest(events=[view], catalog_strict=False)
    movielens_import(path=MINI_CSV, progress=False)

    _assert_online_features_equal_the_replay()
    assert UserFeatures.objects.get(user__external_id="1").counts_by_type == {"view": 1, "rating": 10}


def test_an_import_interrupted_before_the_feature_rebuild_is_completed_by_running_it_again(monkeypatch):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(movielens, "online_features_rebuild", interrupted)
    with pytest.raises(KeyboardInterrupt):
        movielens_import(path=MINI_CSV, progress=False)
    monkeypatch.undo()

    report = movielens_import(path=MINI_CSV, progress=False)

    assert (report.events_imported, Interaction.objects.count()) == (0, 40)
    _assert_online_features_equal_the_replay()


def test_bad_rating_lines_are_skipped_and_counted(tmp_path):
    shutil.copytree(MINI_CSV, tmp_path, dirs_exist_ok=True)
    with (tmp_path / "ratings.csv").open("a") as ratings:
        ratings.write("1,2,7.0,880100001\n1,2,abc,880100002\n1,2\n5,3,0.0,880500000\n\n5,3,4.0,soon\n")
        ratings.write("5,3,4.0,99999999999999999\n,3,4.0,880500000\n")

    out, err = StringIO(), StringIO()
    call_command("import_movielens", str(tmp_path), "--no-progress", stdout=out, stderr=err)

    assert "events 40 imported, 0 duplicates skipped; 7 invalid lines skipped." in out.getvalue()
    assert "Skipped ratings.csv line 42: rating 7.0 outside [0.5, 5.0]\n" in err.getvalue()
    assert Interaction.objects.count() == 40
    assert not EndUser.objects.filter(external_id="5").exists()


def test_the_command_prints_the_counts():
    assert _imported(MINI_1M) == (
        f"Imported {MINI_1M} (1m layout): items 11 created, 0 updated; users 4 created; "
        "events 40 imported, 0 duplicates skipped; 0 invalid lines skipped.\n"
    )


def test_a_directory_without_a_known_layout_raises_command_error(tmp_path):
    (tmp_path / "ratings.txt").write_text("1,2,3.0,880100000\n")

    with pytest.raises(CommandError, match=r"holds no MovieLens layout: expected ratings\.csv \+ movies\.csv"):
        _imported(tmp_path)


def test_a_nonexistent_path_raises_command_error(tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        _imported(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(not ML_LATEST_SMALL.is_dir(), reason=f"ml-latest-small is not at {ML_LATEST_SMALL}")
def test_the_real_ml_latest_small_imports_every_rating_user_and_movie():
    report = movielens_import(path=ML_LATEST_SMALL, progress=False)

    assert (report.layout, report.users_created, report.items_created) == ("csv", 610, 9742)
    assert (report.events_imported, report.duplicates_skipped) == (100836, 0)
    assert report.invalid_lines == 0
    assert (Interaction.objects.count(), EndUser.objects.count(), Item.objects.count()) == (100836, 610, 9742)
    assert UserFeatures.objects.get(user__external_id="1").rating_count == 232
    assert ItemFeatures.objects.get(item__external_id="1").event_count == 215
