"""The evaluation protocol's metrics (docs/ARCHITECTURE.md): ranking metrics at K over all unseen active
items, rating metrics, the two ranking baselines' lists from the same candidates, and the two rating baselines
(the global mean, and regularised user + item biases).

Rating metrics come from sklearn.metrics. The ranking metrics stay here: sklearn's ndcg_score and
average_precision_score score every item of a row, while the protocol scores a top-k list against the
held-out positives with the ideal DCG and MAP's denominator capped at min(k, |P|)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from recommendations.ranking import SOURCE_COLLABORATIVE, SOURCE_POPULAR, Candidates

RANKING_METRICS = ["ndcg", "recall", "precision", "map", "hit_rate", "coverage"]
CF_NAME = "ease"
KNN_NAME = "itemknn"
CANDIDATE_RECALL_AT = 100


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
    scored = [(np.asarray(items)[:k], relevant) for items, relevant in zip(recommended, positives) if len(relevant)]
    found = _found_in([top for top, _ in scored], [relevant for _, relevant in scored])
    for (top, relevant), hits in zip(scored, np.split(found, np.cumsum([len(top) for top, _ in scored])[:-1])):
        users += 1
        distinct.update(top.tolist())
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
    """RMSE, MAE and R² (NaN on constant ratings, where R² is undefined: sklearn would report 0 or 1)."""
    if not len(actual):
        return {"rmse": math.nan, "mae": math.nan, "r2": math.nan, "ratings": 0}
    actual, predicted = np.asarray(actual, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    return {
        "rmse": float(root_mean_squared_error(actual, predicted)),
        "mae": float(mean_absolute_error(actual, predicted)),
        "r2": float(r2_score(actual, predicted)) if np.ptp(actual) else math.nan,
        "ratings": len(actual),
    }


def baseline_lists(candidates: Candidates, *, popularity_rank: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Top-k of each candidate source alone: most-popular and the collaborative model (EASE)."""
    cf = candidates.source & SOURCE_COLLABORATIVE > 0
    popular = candidates.source & SOURCE_POPULAR > 0
    cf_codes = candidates.codes[cf][np.argsort(candidates.cf_rank[cf], kind="stable")][:k]
    pop_codes = candidates.codes[popular][np.argsort(popularity_rank[candidates.codes[popular]], kind="stable")][:k]
    return {"popularity": pop_codes, CF_NAME: cf_codes}


def candidate_order(candidates: Candidates, *, popularity_rank: np.ndarray) -> np.ndarray:
    """A user's candidate pool in the candidate stage's own order: the collaborative model's picks by its rank,
    then the popular items it did not pick, by popularity."""
    cf = candidates.source & SOURCE_COLLABORATIVE > 0
    first = np.where(cf, candidates.cf_rank, np.inf)
    return candidates.codes[np.lexsort((popularity_rank[candidates.codes], first))]


def candidate_recall(
    *, pools: list[np.ndarray], positives: list[np.ndarray], n: int = CANDIDATE_RECALL_AT
) -> dict[str, float]:
    """How much of the held-out positives the candidate stage puts in front of the ranker, averaged over users
    with a positive: among the first `n` candidates (`candidate_recall@n`) and in the whole pool
    (`candidate_recall`, of `candidates_per_user` items on average). The ranker's recall@k cannot exceed the
    latter: it judges candidate generation apart from ranking."""
    scored = [i for i, relevant in enumerate(positives) if len(relevant)]
    relevant = [positives[i] for i in scored]
    pool = [pools[i] for i in scored]
    owner = np.repeat(np.arange(len(scored)), [len(r) for r in relevant])
    counts = np.bincount(owner, minlength=len(scored))
    rows = np.column_stack(
        [
            np.bincount(owner, weights=_found_in(relevant, [p[:n] for p in pool]), minlength=len(scored)) / counts,
            np.bincount(owner, weights=_found_in(relevant, pool), minlength=len(scored)) / counts,
            np.array([len(p) for p in pool], dtype=np.float64),
        ]
    ).reshape(-1, 3)
    at_n, whole, size = rows.mean(axis=0) if len(rows) else (0.0, 0.0, 0.0)
    return {f"candidate_recall@{n}": float(at_n), "candidate_recall": float(whole), "candidates_per_user": float(size)}


def _found_in(wanted: list[np.ndarray], where: list[np.ndarray]) -> np.ndarray:
    """np.isin(wanted[i], where[i]) for every i, concatenated: one call over all lists (each item keyed by its
    list) instead of one per user, whose fixed cost dominated the metrics of a large holdout."""
    wanted = [np.asarray(a, dtype=np.int64) for a in wanted]
    where = [np.asarray(a, dtype=np.int64) for a in where]
    if not wanted:
        return np.empty(0, dtype=bool)
    width = 1 + max(int(a.max(initial=-1)) for a in wanted + where)
    keys = [np.concatenate([i * width + a for i, a in enumerate(arrays)]) for arrays in (wanted, where)]
    return np.isin(keys[0], keys[1])


def metric_keys(metrics: dict[str, float], k: int) -> dict[str, float]:
    """{"ndcg": ...} -> {"ndcg@10": ...}, the report's names."""
    return {f"{name}@{k}": float(metrics[name]) for name in RANKING_METRICS}


def ranking_metrics_at(
    *, recommended: list[np.ndarray], positives: list[np.ndarray], k: int, n_active_items: int
) -> dict[str, float]:
    """ranking_metrics under the report's names ("ndcg@10", ...)."""
    return metric_keys(
        ranking_metrics(recommended=recommended, positives=positives, k=k, n_active_items=n_active_items), k
    )


# --- Rating baselines -----------------------------------------------------------------------------

RATING_BASELINES = ("global_mean", "bias")
# The bias model's λ is chosen among these on a validation split inside the training data; 5 (what the issue
# measured on ml-latest-small) is the value used when there is nothing to validate on.
BIAS_L2_GRID = (1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 35.0, 60.0)
BIAS_L2_DEFAULT = 5.0
BIAS_SWEEPS = 15  # alternating updates; the biases move by < 1e-4 after ~10 on MovieLens


@dataclass
class BiasModel:
    """rating ≈ mean + user bias + item bias; users and items unseen in fitting have bias 0."""

    mean: float
    user_bias: np.ndarray  # per user code
    item_bias: np.ndarray  # per item code
    l2: float

    def predict(self, *, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        return self.mean + self.user_bias[user] + self.item_bias[item]


def bias_fit(
    *, user: np.ndarray, item: np.ndarray, rating: np.ndarray, n_users: int, n_items: int, l2: float
) -> BiasModel:
    """Regularised user + item biases by alternating least squares (each bias shrunk by count / (count + λ))."""
    rating = np.asarray(rating, dtype=np.float64)
    mean = float(rating.mean()) if len(rating) else math.nan
    user_count = np.bincount(user, minlength=n_users) + l2
    item_count = np.bincount(item, minlength=n_items) + l2
    user_bias, item_bias = np.zeros(n_users), np.zeros(n_items)
    centered = rating - mean  # rating - mean - bias is (rating - mean) - bias: the first difference once
    for _ in range(BIAS_SWEEPS):
        item_bias = np.bincount(item, centered - user_bias[user], minlength=n_items) / item_count
        user_bias = np.bincount(user, centered - item_bias[item], minlength=n_users) / user_count
    return BiasModel(mean=mean, user_bias=user_bias, item_bias=item_bias, l2=l2)


def bias_l2_choose(
    *,
    fit: tuple[np.ndarray, np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_users: int,
    n_items: int,
) -> float:
    """The λ of BIAS_L2_GRID with the lowest RMSE on `valid` for biases fitted on `fit` ((user, item, rating)
    arrays, both inside the training data); BIAS_L2_DEFAULT without ratings on either side."""
    if not len(fit[2]) or not len(valid[2]):
        return BIAS_L2_DEFAULT
    errors = [
        root_mean_squared_error(
            valid[2],
            bias_fit(user=fit[0], item=fit[1], rating=fit[2], n_users=n_users, n_items=n_items, l2=l2).predict(
                user=valid[0], item=valid[1]
            ),
        )
        for l2 in BIAS_L2_GRID
    ]
    return BIAS_L2_GRID[int(np.argmin(errors))]
