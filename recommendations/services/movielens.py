"""Import of a MovieLens dataset (GroupLens' 100K, 1M or CSV layout) as items, users and rating events."""

import csv
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import NamedTuple, TypeVar

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone
from tqdm import tqdm

from recommendations import sql
from recommendations.models import EndUser, EventType, Interaction, Item, ItemFeatures, UserFeatures
from recommendations.services.catalog import ItemInput, item_upsert
from recommendations.services.online_features import online_features_rebuild
from recsite.errors import ApplicationError

# Fixed for good: the event ids of earlier imports depend on it, and idempotence on the event ids.
EVENT_ID_NAMESPACE = uuid.UUID("3f0c8a52-6a47-4c1e-9d3b-2f6c1b7e8a90")
CHUNK_SIZE = 5000
INVALID_EXAMPLES_KEPT = 10

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRE = {"unknown", "(no genres listed)"}
AGE_GROUPS_1M = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip
_YEAR_IN_TITLE = re.compile(r"\((\d{4})[^()]*\)\s*$")
_YEAR_AT_END = re.compile(r"(\d{4})$")


@dataclass
class ImportReport:
    layout: str
    items_created: int = 0
    items_updated: int = 0
    users_created: int = 0
    events_imported: int = 0
    duplicates_skipped: int = 0
    invalid_lines: int = 0
    invalid_examples: list[str] = field(default_factory=list)

    def invalid_line(self, file: str, line_no: int, reason: str) -> None:
        self.invalid_lines += 1
        if len(self.invalid_examples) < INVALID_EXAMPLES_KEPT:
            self.invalid_examples.append(f"{file} line {line_no}: {reason}")


class _Rating(NamedTuple):
    user_id: str
    movie_id: str
    value: float
    ts: int
    moment: datetime


_Parsed = TypeVar("_Parsed")


@dataclass(frozen=True)
class _Source:
    name: str
    separator: str | None  # None: any run of whitespace


@dataclass(frozen=True)
class _Layout:
    name: str
    ratings: _Source
    movies: _Source
    users: _Source | None
    encoding: str
    header: bool
    movie_parse: Callable[[list[str]], ItemInput]
    user_parse: Callable[[list[str]], tuple[str, dict]] | None = None


def _year(text: str, pattern: re.Pattern = _YEAR_IN_TITLE) -> dict:
    match = pattern.search(text.strip())
    return {"year": int(match.group(1))} if match else {}


def _item(movie_id: str, title: str, genres: Iterable[str], attributes: dict) -> ItemInput:
    return ItemInput(
        item_id=movie_id.strip(),
        title=title.strip(),
        categories=[genre for genre in genres if genre and genre not in NO_GENRE],
        attributes={**attributes, "source": "movielens"},
    )


def _movie_100k(fields: list[str]) -> ItemInput:
    movie_id, title, release_date, _video_release_date, imdb_url, *flags = fields
    attributes = _year(title) or _year(release_date, pattern=_YEAR_AT_END)
    if imdb_url.strip():
        attributes["imdb_url"] = imdb_url.strip()
    genres = (genre for genre, flag in zip(GENRES_100K, flags) if flag.strip() == "1")
    return _item(movie_id, title, genres, attributes)


def _movie_titled(fields: list[str]) -> ItemInput:
    movie_id, title, genres = fields
    return _item(movie_id, title, genres.strip().split("|"), _year(title))


def _user_100k(fields: list[str]) -> tuple[str, dict]:
    user_id, age, gender, occupation, zip_code = (f.strip() for f in fields)
    return user_id, {"age": int(age), "gender": gender, "occupation": occupation, "zip": zip_code}


def _user_1m(fields: list[str]) -> tuple[str, dict]:
    user_id, gender, age, occupation, zip_code = (f.strip() for f in fields)
    return user_id, {
        "age": int(age),
        "age_group": AGE_GROUPS_1M.get(int(age), age),
        "gender": gender,
        "occupation": OCCUPATIONS_1M[int(occupation)],
        "zip": zip_code,
    }


LAYOUTS = (
    _Layout(
        name="csv",
        ratings=_Source("ratings.csv", ","),
        movies=_Source("movies.csv", ","),
        users=None,
        encoding="utf-8",
        header=True,
        movie_parse=_movie_titled,
    ),
    _Layout(
        name="1m",
        ratings=_Source("ratings.dat", "::"),
        movies=_Source("movies.dat", "::"),
        users=_Source("users.dat", "::"),
        encoding="latin-1",
        header=False,
        movie_parse=_movie_titled,
        user_parse=_user_1m,
    ),
    _Layout(
        name="100k",
        ratings=_Source("u.data", None),
        movies=_Source("u.item", "|"),
        users=_Source("u.user", "|"),
        encoding="latin-1",
        header=False,
        movie_parse=_movie_100k,
        user_parse=_user_100k,
    ),
)


def _layout_detect(path: Path) -> _Layout:
    if not path.exists():
        raise ApplicationError(f"{path} does not exist.")
    if not path.is_dir():
        raise ApplicationError(f"{path} is not a directory.")
    for layout in LAYOUTS:
        if (path / layout.ratings.name).is_file() and (path / layout.movies.name).is_file():
            return layout
    expected = "; ".join(f"{layout.ratings.name} + {layout.movies.name} ({layout.name})" for layout in LAYOUTS)
    raise ApplicationError(f"{path} holds no MovieLens layout: expected {expected}.")


def movielens_import(*, path: Path, progress: bool = True, before: datetime | None = None) -> ImportReport:
    """Import the MovieLens dataset in directory `path`; a repeated import adds nothing.

    Each rating's event id is a uuid5 of the user, movie and timestamp, so stored ratings are recognised
    and skipped. Ratings are committed chunk by chunk; the online features of every user and item the
    file mentions are then rebuilt from the event log, which also repairs an import that was interrupted
    between its last chunk and the rebuild. With `before`, only ratings strictly before that time are
    imported (a replay imports the first part of a timeline and streams the rest)."""
    layout = _layout_detect(path)
    report = ImportReport(layout=layout.name)
    _movies_import(path, layout, report)
    if layout.users and (path / layout.users.name).is_file():
        _users_import(path, layout, report)
    users, items = _ratings_import(path, layout, report, progress, before)
    if users:
        online_features_rebuild(user_ids=sorted(users.values()), item_ids=sorted(items.values()))
        sql.statistics_refresh(models=[Item, EndUser, Interaction, ItemFeatures, UserFeatures])
    return report


def _rows(path: Path, layout: _Layout, source: _Source, bar: tqdm | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank data line; `bar` advances by the bytes read."""
    with (path / source.name).open("rb") as raw:
        lines = (_decoded(line, layout.encoding, bar) for line in raw)
        rows = csv.reader(lines) if source.separator == "," else (line.split(source.separator) for line in lines)
        for line_no, fields in enumerate(rows, start=1):
            if (line_no > 1 or not layout.header) and any(f.strip() for f in fields):
                yield line_no, [f.rstrip("\r\n") for f in fields]


def _decoded(line: bytes, encoding: str, bar: tqdm | None) -> str:
    if bar is not None:
        bar.update(len(line))
    return line.decode(encoding, errors="replace")


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _parsed(
    rows: Iterable[tuple[int, list[str]]], parse: Callable[[list[str]], _Parsed], source: _Source, report: ImportReport
) -> Iterator[_Parsed]:
    for line_no, fields in rows:
        try:
            yield parse(fields)
        except (ValueError, IndexError) as exc:
            report.invalid_line(source.name, line_no, str(exc))


def _movies_import(path: Path, layout: _Layout, report: ImportReport) -> None:
    movies = _parsed(_rows(path, layout, layout.movies), layout.movie_parse, layout.movies, report)
    for chunk in _chunks(movies, CHUNK_SIZE):
        result = item_upsert(items=chunk)
        report.items_created += result.created
        report.items_updated += result.updated


def _users_import(path: Path, layout: _Layout, report: ImportReport) -> None:
    """Create or update the listed users; their demographics replace their attributes."""
    users = _parsed(_rows(path, layout, layout.users), layout.user_parse, layout.users, report)
    for chunk in _chunks(users, CHUNK_SIZE):
        attributes = dict(chunk)
        with transaction.atomic():
            existing = set(EndUser.objects.filter(external_id__in=attributes).values_list("external_id", flat=True))
            EndUser.objects.bulk_create(
                [EndUser(external_id=user_id, attributes=attrs) for user_id, attrs in attributes.items()],
                update_conflicts=True,
                unique_fields=["external_id"],
                update_fields=["attributes"],
            )
        report.users_created += len(attributes.keys() - existing)


def movielens_ratings(*, path: Path) -> list[_Rating]:
    """The valid ratings of a MovieLens directory, in time order (user and movie ids, value, time)."""
    layout = _layout_detect(path)
    report = ImportReport(layout=layout.name)
    ratings = list(_parsed(_rows(path, layout, layout.ratings), _rating, layout.ratings, report))
    return sorted(ratings, key=lambda rating: (rating.ts, rating.user_id, rating.movie_id))


def _rating(fields: list[str]) -> _Rating:
    if len(fields) != 4:
        raise ValueError(f"expected 4 fields, found {len(fields)}")
    user_id, movie_id, value, timestamp = (f.strip() for f in fields)
    if not user_id or not movie_id:
        raise ValueError("missing user or movie id")
    rating = float(value)
    if not settings.RATING_MIN <= rating <= settings.RATING_MAX:
        raise ValueError(f"rating {value} outside [{settings.RATING_MIN}, {settings.RATING_MAX}]")
    ts = int(timestamp)
    try:
        moment = datetime.fromtimestamp(ts, tz=UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp {ts} out of range") from exc
    return _Rating(user_id, movie_id, rating, ts, moment)


def _ratings_import(
    path: Path, layout: _Layout, report: ImportReport, progress: bool, before: datetime | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """Store the ratings chunk by chunk; returns the primary keys of the users and items they mention."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    size = (path / layout.ratings.name).stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, desc=layout.ratings.name, disable=not progress) as bar:
        ratings = _parsed(_rows(path, layout, layout.ratings, bar), _rating, layout.ratings, report)
        if before is not None:
            ratings = (rating for rating in ratings if rating.moment < before)
        for chunk in _chunks(ratings, CHUNK_SIZE):
            with transaction.atomic():
                report.users_created += _pks_resolve(EndUser, {r.user_id for r in chunk}, users)
                # A movie that only ratings name is stored inactive, as ingestion stores an item only events
                # name: not served until the catalogue defines it.
                report.items_created += _pks_resolve(Item, {r.movie_id for r in chunk}, items, active=False)
                imported = _ratings_store(chunk, users, items)
            report.events_imported += imported
            report.duplicates_skipped += len(chunk) - imported
    return users, items


def _pks_resolve(model: type[models.Model], external_ids: set[str], known: dict[str, int], **bare) -> int:
    """Add the primary keys of `external_ids` to `known`, creating bare rows (with the fields `bare`) for unknown
    ids; returns how many."""
    wanted = external_ids - known.keys()
    if not wanted:
        return 0
    known.update(model.objects.filter(external_id__in=wanted).values_list("external_id", "pk"))
    missing = wanted - known.keys()
    if missing:
        # Sorted: a set's order changes with PYTHONHASHSEED, and so would the keys of the same import.
        model.objects.bulk_create(
            [model(external_id=external_id, **bare) for external_id in sorted(missing)], ignore_conflicts=True
        )
        known.update(model.objects.filter(external_id__in=missing).values_list("external_id", "pk"))
    return len(missing)


def _ratings_store(chunk: list[_Rating], users: dict[str, int], items: dict[str, int]) -> int:
    by_event_id = {uuid.uuid5(EVENT_ID_NAMESPACE, f"movielens:{r.user_id}:{r.movie_id}:{r.ts}"): r for r in chunk}
    rows = [
        (event_id, users[rating.user_id], items[rating.movie_id], EventType.RATING.value, rating.value, rating.moment)
        for event_id, rating in by_event_id.items()
    ]
    return sql.interactions_import(rows=rows, received_at=timezone.now())
