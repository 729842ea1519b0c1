"""How far any model can get on a synthetic timeline (issue 15): the NDCG@10 of an oracle that knows the generator's
hidden parameters, on exactly the held-out events and protocol of `model_train`'s evaluation (the same split,
evaluated users, positives and candidate pools), beside most-popular, EASE and item-kNN on the same lists.

    PYTHONHASHSEED=0 nice -n 19 .venv/bin/python bench/oracle_bound.py synthetic:300:500:30000:0.7:1
    PYTHONHASHSEED=0 nice -n 19 .venv/bin/python bench/oracle_bound.py --ranker synthetic:300:500:30000:0.7:1

The specs are bench/ranker_quality.py's synthetic ones. For each evaluated user, at the start of their holdout, the
oracle scores every item by
- "choice": the generator's probability that the user's next rating is of that item (their training items
  excluded, as the generator excludes what a user has rated);
- "positive": the probability that the item is among the user's held-out positives — that some held-out event
  picks it and rates it >= 4 — from the pick probability at each held-out event's time and the probability of a
  rating >= 4 (the latter also knows how many held-out events there are and when: a bound, not a model).
Each is ranked over the candidate pool the ranker sees ("candidates") and over all unseen active items ("all").
Two weaker "positive" oracles tell where the headroom is: "items" knows the items (popularity, quality) and the
users' biases but no taste, "genres" also the users' genre tastes but not their latent vectors (all unseen items).
The figures are lower bounds on the best ranking the generator allows: the pick rule is that of one rating, while
a heavy user's later picks are redrawn (no item twice; after POPULARITY_ROUNDS, uniformly).
With --ranker, the trained ranker's NDCG@10 on the same data (model_train, as bench/ranker_quality.py) is added.

"genre_popularity" is a probe of how much of the genre taste a model can learn from the users' own events:
most-popular's score (log of 1 + the users with a positive) plus `tilt` × the item's genres' smoothed log
preference of the user (their training events' genre mix, with GENRE_PRIOR events of the catalogue's mix, over the
catalogue's mix), ranked over all unseen active items; the tilt is chosen among GENRE_TILTS on the training
portion's own last 20 % per user (label window 0, the protocol one level down), never on the holdout.
"""

import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from ranker_quality import SyntheticSpec, event_log_read, ratings_read, users_ordered

from recommendations.features import POSITIVE_RATING
from recommendations.services.synthetic import (
    LATENT_DIM,
    SyntheticWorld,
    synthetic_pick_probabilities,
    synthetic_positive_probabilities,
    synthetic_world,
)
from retraining.ml.candidates import collaborative_and_item_knn_fit, item_knn_lists
from retraining.ml.events import EventLog
from retraining.ml.metrics import ranking_metrics_at
from retraining.ml.params import TrainingParams
from retraining.ml.replay import Evaluation, evaluation_run
from retraining.ml.split import Split, histories_by_user, split_compute
from retraining.services.training import model_train

SAMPLES = 20_000  # candidate draws per pick probability: the top items' estimates move by < 1%
ORACLES = ("choice", "positive")
PARTIAL_ORACLES = ("items", "genres")  # "positive" knowing less of the users' tastes, over all unseen items
GENRE_TILTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
GENRE_PRIOR = 5.0


def oracle_scores(
    worlds: dict[str, SyntheticWorld],
    *,
    user: int,
    history: np.ndarray,
    held_at: np.ndarray,
    at: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Per item (generator indexes), each oracle's score for one user ranked at `at`, with `history` the items
    rated before it and `held_at` the times of the held-out events (seconds from the timeline's start); `worlds`
    are what the "positive" oracles know (oracle_worlds)."""
    choice = synthetic_pick_probabilities(
        worlds["positive"], user=user, at=at, excluded=history, rng=rng, samples=SAMPLES
    )
    positive = {
        name: _positive_probability(known, user=user, history=history, held_at=held_at, rng=rng)
        for name, known in worlds.items()
    }
    return {"choice": choice} | positive


def oracle_worlds(world: SyntheticWorld) -> dict[str, SyntheticWorld]:
    """The world as each "positive" oracle knows it: whole, without the users' latent vectors ("genres"), without
    their taste at all ("items")."""
    worlds = {"positive": world}
    for name in PARTIAL_ORACLES:
        tastes = world.user_vectors.copy()
        tastes[..., : LATENT_DIM if name == "genres" else None] = 0.0
        worlds[name] = replace(world, user_vectors=tastes)
    return worlds


def _positive_probability(
    world: SyntheticWorld, *, user: int, history: np.ndarray, held_at: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per item, the probability that some held-out event picks it and rates it >= POSITIVE_RATING."""
    missed = np.ones(len(world.release))
    for moment, events in zip(*np.unique(held_at, return_counts=True)):
        pick = synthetic_pick_probabilities(world, user=user, at=moment, excluded=history, rng=rng, samples=SAMPLES)
        good = synthetic_positive_probabilities(world, user=user, at=moment, threshold=POSITIVE_RATING)
        missed *= (1.0 - pick * good) ** events
    return 1.0 - missed


def oracle_lists(
    world: SyntheticWorld,
    *,
    log: EventLog,
    split: Split,
    evaluation: Evaluation,
    user_index: np.ndarray,
    begin: float,
    k: int,
) -> dict[str, list[np.ndarray]]:
    """Each oracle's top-k per evaluated user, over the candidate pool and over all unseen active items (catalogue
    codes). `user_index` maps user codes to the generator's users; items are the generator's in catalogue order."""
    item_index = np.array([int(external) - 1 for external in log.item_external_ids])
    histories = histories_by_user(log, split.train)
    rng = np.random.default_rng(0)
    worlds = oracle_worlds(world)
    lists = {f"oracle_{name}_{domain}": [] for name in ORACLES for domain in ("candidates", "all")}
    lists |= {f"oracle_{name}_all": [] for name in PARTIAL_ORACLES}
    for u, pool in zip(evaluation.users.tolist(), evaluation.pools):
        held = log.ts[split.holdout & (log.user == u)] - begin
        scores = oracle_scores(
            worlds,
            user=int(user_index[u]),
            history=item_index[histories[u]],
            held_at=_distinct_moments(world, held),
            at=float(split.cutoff[u]) - begin,
            rng=rng,
        )
        unseen = np.flatnonzero(log.item_active & ~np.isin(np.arange(len(item_index)), histories[u]))
        for name, score in scores.items():
            by_code = score[item_index]
            lists[f"oracle_{name}_all"].append(_top(unseen, by_code, k))
            if name in ORACLES:
                lists[f"oracle_{name}_candidates"].append(_top(pool, by_code, k))
    return lists


def _distinct_moments(world: SyntheticWorld, held: np.ndarray) -> np.ndarray:
    """One time per held-out event, but events in the same state of the world (phase, released items) share one
    pick probability: the first such time stands for them, repeated."""
    state = (held >= world.drift) * (len(world.release) + 1) + np.searchsorted(np.sort(world.release), held, "right")
    _, first, inverse = np.unique(state, return_index=True, return_inverse=True)
    return held[first][inverse]


def _top(codes: np.ndarray, score_by_code: np.ndarray, k: int) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.int64)
    return codes[np.lexsort((codes, -score_by_code[codes]))][:k]


def genre_popularity_ndcg(log: EventLog, params: TrainingParams) -> dict[float, float]:
    """NDCG@10 of the genre-tilted popularity for each tilt of GENRE_TILTS, on `log`'s own holdout."""
    split = split_compute(log, params)
    model = collaborative_and_item_knn_fit(log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2)[
        0
    ]
    evaluation = evaluation_run(log, split, params, {}, model, None, with_regressor=False)
    names = sorted({name for categories in log.item_categories for name in categories})
    genres = np.zeros((len(log.item_categories), len(names)))
    for code, categories in enumerate(log.item_categories):
        genres[code, [names.index(name) for name in categories]] = 1.0 / max(len(categories), 1)
    mix = genres[log.item_active].sum(axis=0) / genres[log.item_active].sum()
    histories, popular = histories_by_user(log, split.train), np.log1p(model.popularity)
    scores = {tilt: [] for tilt in GENRE_TILTS}
    for u in evaluation.users.tolist():
        seen = histories[u]
        preference = np.log((genres[seen].sum(axis=0) + GENRE_PRIOR * mix) / (len(seen) + GENRE_PRIOR) / mix)
        unseen = np.flatnonzero(log.item_active & ~np.isin(np.arange(len(genres)), seen))
        for tilt in GENRE_TILTS:
            scores[tilt].append(_top(unseen, popular + tilt * np.nan_to_num(genres @ preference), params.k))
    return {
        tilt: ranking_metrics_at(
            recommended=lists, positives=evaluation.positives, k=params.k, n_active_items=int(log.item_active.sum())
        )["ndcg@10"]
        for tilt, lists in scores.items()
    }


def genre_popularity(log: EventLog, split: Split, params: TrainingParams) -> dict:
    """The tilt chosen on label window 0 (its validation NDCG@10 per tilt) and the probe's NDCG@10 on the holdout."""
    validation = genre_popularity_ndcg(log.subset(split.train), params)
    tilt = max(GENRE_TILTS, key=lambda t: (round(validation[t], 6), -t))  # the smallest tilt on a tie
    return {
        "genre_popularity": genre_popularity_ndcg(log, params)[tilt],
        "genre_tilt": tilt,
        "genre_tilt_validation": {str(t): round(score, 4) for t, score in validation.items()},
    }


def oracle_bound(spec: str, scratch: Path, *, params: TrainingParams, with_ranker: bool) -> dict:
    started = time.process_time()
    synthetic = SyntheticSpec.parse(spec)
    folder = synthetic.write(scratch)
    log = event_log_read(folder, synthetic.share)
    user_index = np.array([int(u) - 1 for u in users_ordered(ratings_read(folder, synthetic.share))])
    world = synthetic_world(
        users=synthetic.users, items=synthetic.items, drift_at=synthetic.drift_at, seed=synthetic.seed
    )
    begin = datetime(synthetic.start.year, synthetic.start.month, synthetic.start.day, tzinfo=UTC).timestamp()
    split = split_compute(log, params)
    model, knn = collaborative_and_item_knn_fit(
        log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2
    )
    evaluation = evaluation_run(log, split, params, {}, model, None, with_regressor=False)
    lists = dict(evaluation.ranked)
    lists["itemknn"] = item_knn_lists(
        knn=knn, histories=histories_by_user(log, split.train), users=evaluation.users, k=params.k
    )
    lists |= oracle_lists(
        world, log=log, split=split, evaluation=evaluation, user_index=user_index, begin=begin, k=params.k
    )
    row = {
        name: ranking_metrics_at(
            recommended=ranked, positives=evaluation.positives, k=params.k, n_active_items=int(log.item_active.sum())
        )["ndcg@10"]
        for name, ranked in lists.items()
    }
    probe = genre_popularity(log, split, params)
    row["genre_popularity"] = probe.pop("genre_popularity")
    if with_ranker:
        row["ranker"] = model_train(output_dir=None, params=params, progress=None, log=log).metrics["ndcg@10"]
    popularity, best_baseline = row["popularity"], max(row["ease"], row["itemknn"])
    row |= {
        f"{name}_vs_popularity": row[name] / popularity
        for name in list(row)
        if name.startswith(("oracle", "ranker", "genre"))
    }
    row |= {"oracle_positive_all_vs_best_baseline": row["oracle_positive_all"] / best_baseline}
    row |= probe | {"users": len(evaluation.users), "cpu_seconds": time.process_time() - started}
    return {name: round(value, 4) if isinstance(value, float) else value for name, value in row.items()}


if __name__ == "__main__":
    with_ranker = "--ranker" in sys.argv[1:]
    training = TrainingParams(num_threads=1)
    with tempfile.TemporaryDirectory(prefix="oracle-bound-") as scratch:
        for spec in (arg for arg in sys.argv[1:] if arg != "--ranker"):
            print(
                spec,
                json.dumps(oracle_bound(spec, Path(scratch), params=training, with_ranker=with_ranker)),
                flush=True,
            )
