"""The evaluation protocol (docs/ARCHITECTURE.md): temporal holdout per user, ranking metrics at K over all
unseen active items, rating metrics, and the two baselines scored on the same split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recommendations.ranking import SOURCE_COLLABORATIVE, SOURCE_POPULAR, Candidates

RANKING_METRICS = ["ndcg", "recall", "precision", "map", "hit_rate", "coverage"]


@dataclass
class HoldoutSplit:
    holdout: np.ndarray  # bool per event of the log
    cutoff: np.ndarray  # float64 per user code: time of the user's first held-out event, NaN if none


def holdout_split(
    *, user: np.ndarray, ts: np.ndarray, mask: np.ndarray, n_users: int, fraction: float = 0.2, min_events: int = 5
) -> HoldoutSplit:
    """Among the events in `mask` (a log sorted by (time, id)), each user with at least `min_events`
    events holds out their last `fraction` (at least one event)."""
    index = np.flatnonzero(mask)
    by_user = index[np.argsort(user[index], kind="stable")]
    counts = np.bincount(user[index], minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    held = np.where(counts >= min_events, np.maximum(1, np.floor(counts * fraction + 0.5)), 0).astype(np.int64)
    rank_in_user = np.arange(len(by_user)) - starts[user[by_user]]
    is_held = rank_in_user >= (counts - held)[user[by_user]]
    holdout = np.zeros(len(user), dtype=bool)
    holdout[by_user[is_held]] = True
    cutoff = np.full(n_users, np.nan)
    first_held = by_user[is_held & (rank_in_user == (counts - held)[user[by_user]])]
    cutoff[user[first_held]] = ts[first_held]
    return HoldoutSplit(holdout=holdout, cutoff=cutoff)


def ranking_metrics(
    *, recommended: list[np.ndarray], positives: list[np.ndarray], k: int, n_active_items: int
) -> dict[str, float]:
    """Metrics at k averaged over users with at least one positive (users without one are skipped).

    Recall = hits/|P|, Precision = hits/k, MAP = sum of precision@i at hit positions / min(k, |P|),
    NDCG with binary gains and the ideal DCG over min(k, |P|), HitRate = share of users with a hit,
    coverage = distinct recommended items / active items."""
    totals = dict.fromkeys(["ndcg", "recall", "precision", "map", "hit_rate"], 0.0)
    users = 0
    distinct: set[int] = set()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for items, relevant in zip(recommended, positives):
        if not len(relevant):
            continue
        users += 1
        top = np.asarray(items)[:k]
        distinct.update(top.tolist())
        hits = np.isin(top, relevant)
        n_hits = int(hits.sum())
        ideal = min(k, len(relevant))
        totals["recall"] += n_hits / len(relevant)
        totals["precision"] += n_hits / k
        totals["hit_rate"] += float(n_hits > 0)
        precision_at = np.cumsum(hits) / np.arange(1, len(top) + 1)
        totals["map"] += float(precision_at[hits].sum()) / ideal
        totals["ndcg"] += float(discounts[: len(top)][hits].sum()) / float(discounts[:ideal].sum())
    result = {name: value / users if users else 0.0 for name, value in totals.items()}
    result["coverage"] = len(distinct) / n_active_items if n_active_items else 0.0
    result["users"] = users
    return result


def rating_metrics(*, actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    if not len(actual):
        return {"rmse": float("nan"), "mae": float("nan"), "r2": float("nan"), "ratings": 0}
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    spread = float(np.sum((actual - np.mean(actual)) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": 1.0 - float(np.sum(error**2)) / spread if spread else float("nan"),
        "ratings": int(len(actual)),
    }


def baseline_lists(candidates: Candidates, *, popularity_rank: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Top-k of each candidate source alone: most-popular and the collaborative model (EASE)."""
    cf = candidates.source & SOURCE_COLLABORATIVE > 0
    popular = candidates.source & SOURCE_POPULAR > 0
    cf_codes = candidates.codes[cf][np.argsort(candidates.cf_rank[cf], kind="stable")][:k]
    pop_codes = candidates.codes[popular][np.argsort(popularity_rank[candidates.codes[popular]], kind="stable")][:k]
    return {"popularity": pop_codes, "ease": cf_codes}


def metric_keys(metrics: dict[str, float], k: int) -> dict[str, float]:
    """{"ndcg": ...} -> {"ndcg@10": ...}, the report's names."""
    return {f"{name}@{k}": float(metrics[name]) for name in RANKING_METRICS}
