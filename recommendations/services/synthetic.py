"""A synthetic, MovieLens-like rating dataset with a known structure and a drift point, in the CSV layout
(ratings.csv, movies.csv) that import_movielens reads.

The model behind it: items have 1-3 genres, a latent vector, a quality and a Zipf popularity; users have a
taste (a mixture over genres plus a latent vector), a bias and a power-law activity. Events come in sessions
(ratings minutes apart, sessions days apart). A user picks an item among a few candidates drawn by
popularity, favouring the ones that match their taste; the rating is the rounded sum of the user's bias,
the item's quality, the taste match and noise. At the drift point a share of the users turn to a few
trending genres, new items (mostly of those genres) are released, and popularity is re-ranked with the
new items on top.

The hidden parameters can be rebuilt (synthetic_world) to ask the generator what it knows: each user's
probability of picking each item at a time (synthetic_pick_probabilities) and of rating it positively
(synthetic_positive_probabilities) — the oracle that bounds what any model can reach on a timeline.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr
from tqdm import tqdm

from recsite.errors import ApplicationError

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
DAY = 86400.0
LATENT_DIM = 8
LATENT_SCALE = 0.45  # std of latent coordinates: the latent match has a std of about 0.6
GENRE_WEIGHT = 0.4  # taste match per unit of log genre preference
GENRES_PER_ITEM = (0.45, 0.35, 0.2)  # probabilities of 1, 2 and 3 genres
TRENDING_GENRES = 3
NEW_ITEM_SHARE = 0.1
DRIFTING_USER_SHARE = 0.4
ZIPF_EXPONENT = 1.2
ACTIVITY_SHAPE = 1.0  # Pareto shape of the users' activity
MEAN_SESSION_LENGTH = 6.0
MEAN_SECONDS_BETWEEN_RATINGS = 180.0
CANDIDATES = 10
CHOICE_SHARPNESS = 2.0
POPULARITY_ROUNDS = 8  # picks still invalid (already rated, unreleased) after these rounds are redrawn uniformly
MAX_ROUNDS = 200
GLOBAL_MEAN = 3.3
RATING_NOISE = 0.6
BLOCK_EVENTS = 50_000


@dataclass(frozen=True)
class SyntheticReport:
    output: Path | None  # None for a stream that was not written
    users: int
    items: int
    events: int
    new_items: int
    drifting_users: int
    start: datetime
    drift_time: datetime
    end: datetime


@dataclass(frozen=True)
class SyntheticWorld:
    """The hidden parameters a timeline is drawn from; times in seconds from its start."""

    span: float  # seconds from the start to the end of the timeline
    drift: float  # seconds from the start to the drift point
    item_vectors: np.ndarray  # (items, LATENT_DIM + genres): latent vector, then genre shares
    item_quality: np.ndarray
    release: np.ndarray  # seconds from the start
    popularity_cdf: np.ndarray  # (2, items): before and after the drift
    user_vectors: np.ndarray  # (2, users, LATENT_DIM + genres): latent vector, then weighted log genre preference
    user_bias: np.ndarray
    active: np.ndarray  # (2, users): seconds from the start to the user's first and last possible session


@dataclass(frozen=True)
class SyntheticStream:
    """A dataset as it is generated: the catalogue, then the ratings as a generator of DataFrames (the
    ratings.csv columns), one per block of consecutive users of about BLOCK_EVENTS events, in file order."""

    report: SyntheticReport
    movies: pd.DataFrame
    ratings: Iterator[pd.DataFrame]


def synthetic_dataset_stream(
    *,
    users: int,
    items: int,
    events: int,
    drift_at: float,
    seed: int,
    start: date = date(2020, 1, 1),
    days: int = 365,
) -> SyntheticStream:
    """A synthetic dataset whose ratings are generated block by block as they are consumed.

    Memory is bounded by the catalogue, a few numbers per user and BLOCK_EVENTS, not by `events`: a block's
    ratings are drawn when the consumer asks for them, and no user's ratings straddle two blocks (a user
    rates an item at most once, checked within the block)."""
    new_items = round(items * NEW_ITEM_SHARE)
    _validate(users=users, items=items, events=events, drift_at=drift_at, days=days, new_items=new_items)
    rng = np.random.default_rng(seed)
    world, genres, drifting = _world(rng, users, items, new_items, drift_at * days * DAY, days * DAY)
    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    movies = _movies_frame(rng, genres, world.release, begin)
    counts = _activity(rng, users, events, cap=(items - new_items) // 2)
    report = SyntheticReport(
        output=None,
        users=users,
        items=items,
        events=events,
        new_items=new_items,
        drifting_users=int(drifting.sum()),
        start=begin,
        drift_time=begin + timedelta(seconds=world.drift),
        end=begin + timedelta(days=days),
    )
    return SyntheticStream(report=report, movies=movies, ratings=_ratings_blocks(rng, world, counts, begin))


def synthetic_dataset_write(
    *,
    output: Path,
    users: int,
    items: int,
    events: int,
    drift_at: float,
    seed: int,
    start: date = date(2020, 1, 1),
    days: int = 365,
    progress: bool = False,
) -> SyntheticReport:
    """Write ratings.csv and movies.csv of a synthetic dataset to `output`; the same arguments give the same files.

    Every user rates at least once and no user rates an item twice. The ratings are appended to the file
    block by block as synthetic_dataset_stream generates them, so memory does not grow with `events`."""
    stream = synthetic_dataset_stream(
        users=users, items=items, events=events, drift_at=drift_at, seed=seed, start=start, days=days
    )
    output.mkdir(parents=True, exist_ok=True)
    stream.movies.to_csv(output / "movies.csv", index=False)
    ratings = output / "ratings.csv"
    ratings.unlink(missing_ok=True)
    with tqdm(total=events, unit="events", desc="ratings.csv", disable=not progress) as bar:
        for block in stream.ratings:
            block.to_csv(ratings, mode="a", header=not ratings.exists(), index=False)
            bar.update(len(block))
    return replace(stream.report, output=output)


def synthetic_world(*, users: int, items: int, drift_at: float, seed: int, days: int = 365) -> SyntheticWorld:
    """The hidden parameters of the timeline synthetic_dataset_stream generates with the same arguments (its
    `events` and `start` do not change them): the world is the first thing drawn from the seed."""
    rng = np.random.default_rng(seed)
    return _world(rng, users, items, round(items * NEW_ITEM_SHARE), drift_at * days * DAY, days * DAY)[0]


def synthetic_pick_probabilities(
    world: SyntheticWorld, *, user: int, at: float, excluded: np.ndarray, rng: np.random.Generator, samples: int
) -> np.ndarray:
    """Per item, the probability that the user's rating at `at` (seconds from the start) is of that item under
    the generator's rule (_items_pick), the `excluded` items (already rated) not eligible: CANDIDATES draws by
    popularity, the best of the released, eligible ones by CHOICE_SHARPNESS × taste match + Gumbel noise, a
    draw without an eligible candidate drawn again. Given the draw the choice is a softmax over the candidates
    (one term per copy); its average over `samples` draws is the estimate. The uniform redraw after
    POPULARITY_ROUNDS fruitless rounds is left out: it concerns users who rated most of the popular items."""
    after = int(at >= world.drift)
    eligible = world.release <= at
    eligible[excluded] = False
    affinity = world.item_vectors @ world.user_vectors[after, user]
    weight = np.where(eligible, np.exp(CHOICE_SHARPNESS * (affinity - affinity.max())), 0.0)
    n_items = len(weight)
    candidates = np.minimum(
        np.searchsorted(world.popularity_cdf[after], rng.random((samples, CANDIDATES)), side="right"), n_items - 1
    )
    drawn = weight[candidates]
    total = drawn.sum(axis=1)
    useful = total > 0
    if not useful.any():
        return eligible / max(eligible.sum(), 1)
    share = drawn[useful] / total[useful, None]
    return np.bincount(candidates[useful].ravel(), share.ravel(), minlength=n_items) / useful.sum()


def synthetic_positive_probabilities(world: SyntheticWorld, *, user: int, at: float, threshold: float) -> np.ndarray:
    """Per item, the probability that the user's rating of it at `at` is at least `threshold` (a half star):
    the rating rounds GLOBAL_MEAN + bias + quality + taste match + N(0, RATING_NOISE) to half stars."""
    after = int(at >= world.drift)
    score = (
        GLOBAL_MEAN + world.user_bias[user] + world.item_quality + world.item_vectors @ world.user_vectors[after, user]
    )
    return ndtr((score - (threshold - 0.25)) / RATING_NOISE)


def _ratings_blocks(
    rng: np.random.Generator, world: SyntheticWorld, counts: np.ndarray, begin: datetime
) -> Iterator[pd.DataFrame]:
    for block_users in _user_blocks(counts):
        block = _block_ratings(rng, world, block_users, counts[block_users])
        block["timestamp"] += int(begin.timestamp())
        yield block


def _validate(*, users: int, items: int, events: int, drift_at: float, days: int, new_items: int) -> None:
    if users < 1 or items < 2 or days < 2:
        raise ApplicationError("A synthetic dataset needs at least 1 user, 2 items and 2 days.")
    if not 0 < drift_at < 1:
        raise ApplicationError(f"The drift point must be a fraction of the timeline in (0, 1), not {drift_at}.")
    capacity = users * ((items - new_items) // 2)
    if not users <= events <= capacity:
        raise ApplicationError(
            f"{events} events do not fit: every user rates at least once, and at most half of the "
            f"{items - new_items} items there before the drift, so between {users} and {capacity} events."
        )


def _world(
    rng: np.random.Generator, users: int, items: int, new_items: int, drift: float, span: float
) -> tuple[SyntheticWorld, np.ndarray, np.ndarray]:
    """The hidden parameters, the items' genre indicator matrix and the drifting users' mask."""
    genre_mix = rng.dirichlet(np.full(len(GENRES), 2.0))
    trending = np.zeros(len(GENRES))
    trending[rng.choice(len(GENRES), TRENDING_GENRES, replace=False)] = 1.0
    is_new = np.zeros(items, dtype=bool)
    is_new[rng.choice(items, new_items, replace=False)] = True
    genre_weights = np.where(is_new[:, None], 0.3 * genre_mix + 0.7 * trending / TRENDING_GENRES, genre_mix)
    genres = _genres_draw(rng, genre_weights)
    release = np.where(is_new, drift + rng.random(items) * 0.1 * (span - drift), 0.0)

    tastes = rng.dirichlet(0.3 * len(GENRES) * genre_mix, size=users)
    drifting = rng.random(users) < DRIFTING_USER_SHARE
    trend_tastes = rng.dirichlet(0.1 + 3.0 * trending, size=users)
    tastes_after = np.where(drifting[:, None], 0.3 * tastes + 0.7 * trend_tastes, tastes)
    user_latent = rng.normal(0.0, LATENT_SCALE, (users, LATENT_DIM))
    item_latent = rng.normal(0.0, LATENT_SCALE, (items, LATENT_DIM))
    world = SyntheticWorld(
        span=span,
        drift=drift,
        item_vectors=np.hstack([item_latent, genres / genres.sum(axis=1, keepdims=True)]).astype(np.float32),
        item_quality=rng.normal(0.0, 0.4, items),
        release=release,
        popularity_cdf=np.vstack(_popularity_draw(rng, is_new)),
        user_vectors=np.stack(
            [np.hstack([user_latent, GENRE_WEIGHT * np.log(len(GENRES) * t + 0.1)]) for t in (tastes, tastes_after)]
        ).astype(np.float32),
        user_bias=rng.normal(0.0, 0.3, users),
        active=_active_windows(rng, users, span),
    )
    return world, genres, drifting


def _active_windows(rng: np.random.Generator, users: int, span: float) -> np.ndarray:
    """Users come and go: windows of 10-100% of the timeline starting anywhere, cut to it, at least a day long."""
    first = rng.uniform(-0.3, 0.9, users) * span
    last = first + rng.uniform(0.1, 1.0, users) * span
    first = np.clip(first, 0.0, span - 2 * DAY)
    return np.vstack([first, np.clip(last, first + DAY, span - DAY)])


def _genres_draw(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """1-3 distinct genres per item, drawn by weight without replacement (Gumbel top-k)."""
    keys = np.log(weights) + rng.gumbel(size=weights.shape)
    ranks = np.argsort(np.argsort(-keys, axis=1), axis=1)
    count = rng.choice(np.arange(1, len(GENRES_PER_ITEM) + 1), size=len(weights), p=GENRES_PER_ITEM)
    return (ranks < count[:, None]).astype(np.float64)


def _popularity_draw(rng: np.random.Generator, is_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative Zipf popularity before the drift (old items only) and after it (re-ranked, new items on top)."""
    old = np.flatnonzero(~is_new)
    before = np.zeros(len(is_new))
    before[rng.permutation(old)] = _zipf(len(old))
    after_score = rng.normal(0.0, 1.0, len(is_new))
    after_score[old] += np.log(before[old])
    after_score[is_new] += 1.0
    after = np.zeros(len(is_new))
    after[np.argsort(-after_score)] = _zipf(len(is_new))
    return _cdf(before), _cdf(after)


def _zipf(n: int) -> np.ndarray:
    return 1.0 / np.arange(1, n + 1) ** ZIPF_EXPONENT


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _activity(rng: np.random.Generator, users: int, events: int, *, cap: int) -> np.ndarray:
    """Events per user: power-law, at least 1 and at most `cap` each, `events` in all."""
    weights = rng.pareto(ACTIVITY_SHAPE, users) + 1.0
    counts = np.ones(users, dtype=np.int64)
    excess = events - users
    while excess:
        counts += rng.multinomial(excess, np.where(counts < cap, weights, 0.0) / weights[counts < cap].sum())
        excess = int(np.maximum(counts - cap, 0).sum())
        np.minimum(counts, cap, out=counts)
    return counts


def _user_blocks(counts: np.ndarray) -> list[np.ndarray]:
    """Consecutive users, about BLOCK_EVENTS events per block."""
    boundaries = np.searchsorted(np.cumsum(counts), np.arange(BLOCK_EVENTS, counts.sum(), BLOCK_EVENTS))
    return [block for block in np.split(np.arange(len(counts)), np.unique(boundaries + 1)) if block.size]


def _block_ratings(
    rng: np.random.Generator, world: SyntheticWorld, users: np.ndarray, counts: np.ndarray
) -> pd.DataFrame:
    user = np.repeat(users, counts)
    at = _event_times(rng, world, user, counts)
    after = (at >= world.drift).astype(np.intp)
    item = _items_pick(rng, world, user, after, at)
    affinity = np.einsum("nf,nf->n", world.user_vectors[after, user], world.item_vectors[item])
    score = GLOBAL_MEAN + world.user_bias[user] + world.item_quality[item] + affinity
    rating = np.clip(np.round(2.0 * (score + rng.normal(0.0, RATING_NOISE, len(user)))) / 2.0, 0.5, 5.0)
    order = np.lexsort((at, user))
    columns = {"userId": user + 1, "movieId": item + 1, "rating": rating, "timestamp": at.astype(np.int64)}
    return pd.DataFrame({name: values[order] for name, values in columns.items()})


def _event_times(rng: np.random.Generator, world: SyntheticWorld, user: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Seconds from the start: sessions at uniform times in the user's active window, ratings minutes apart."""
    position = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    opens = (position == 0) | (rng.random(len(user)) < 1.0 / MEAN_SESSION_LENGTH)
    session = np.cumsum(opens) - 1
    session_user = user[opens]
    draws = rng.random(len(session_user))
    draws = draws[np.lexsort((draws, session_user))]  # sorted within each user, users stay in place
    first, last = world.active[:, session_user]
    session_start = first + draws * (last - first)
    elapsed = np.cumsum(np.where(opens, 0.0, rng.exponential(MEAN_SECONDS_BETWEEN_RATINGS, len(user))))
    within = elapsed - elapsed[opens][session]
    return np.minimum(session_start[session] + within, world.span - 1.0)


def _items_pick(
    rng: np.random.Generator, world: SyntheticWorld, user: np.ndarray, after: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """Each event's item: the best-matching of CANDIDATES drawn by popularity, among released items the user
    has not rated yet. Events without a valid pick are redrawn, after POPULARITY_ROUNDS uniformly."""
    items = world.item_vectors.shape[0]
    item = np.full(len(user), -1)
    rated = np.empty(0, dtype=np.int64)  # sorted user * items + item of the picks so far
    pending = np.arange(len(user))
    for round_ in range(MAX_ROUNDS):
        if not pending.size:
            return item
        draws = rng.random((pending.size, CANDIDATES))
        if round_ < POPULARITY_ROUNDS:
            candidates = np.empty(draws.shape, dtype=np.intp)
            for phase, cdf in enumerate(world.popularity_cdf):
                in_phase = after[pending] == phase
                candidates[in_phase] = np.searchsorted(cdf, draws[in_phase], side="right")
        else:
            candidates = (draws * items).astype(np.intp)
        candidates = np.minimum(candidates, items - 1)
        keys = user[pending, None].astype(np.int64) * items + candidates
        valid = (world.release[candidates] <= at[pending, None]) & ~_sorted_contains(rated, keys)
        tastes = world.user_vectors[after[pending], user[pending]]
        affinity = np.einsum("pf,pkf->pk", tastes, world.item_vectors[candidates])
        score = np.where(valid, CHOICE_SHARPNESS * affinity + rng.gumbel(size=affinity.shape), -np.inf)
        best = score.argmax(axis=1)
        rows = np.arange(pending.size)
        picked = np.flatnonzero(valid[rows, best])
        _, first = np.unique(keys[picked, best[picked]], return_index=True)
        accepted = picked[first]
        item[pending[accepted]] = candidates[accepted, best[accepted]]
        rated = np.sort(np.concatenate([rated, keys[accepted, best[accepted]]]), kind="stable")
        pending = np.delete(pending, accepted)
    raise RuntimeError(f"{pending.size} events found no item after {MAX_ROUNDS} rounds.")


def _sorted_contains(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    if not haystack.size:
        return np.zeros(needles.shape, dtype=bool)
    return haystack[np.minimum(np.searchsorted(haystack, needles), haystack.size - 1)] == needles


def _movies_frame(rng: np.random.Generator, genres: np.ndarray, release: np.ndarray, begin: datetime) -> pd.DataFrame:
    """Titles carry a year: the release year of new items, a year before the start (mostly recent) for the others."""
    age = np.minimum(rng.exponential(8.0, len(release)), 80).astype(int)
    released = np.array([(begin + timedelta(seconds=float(seconds))).year for seconds in release])
    years = np.where(release > 0, released, begin.year - 1 - age)
    names = np.array(GENRES)
    return pd.DataFrame(
        {
            "movieId": np.arange(1, len(release) + 1),
            "title": [f"Synthetic Movie {i} ({year})" for i, year in enumerate(years, start=1)],
            "genres": ["|".join(names[row.astype(bool)]) for row in genres],
        }
    )
