"""The candidate stage: fitting EASE over the most active items and popularity over the whole catalogue.

Memory and time depend on M = `n_modelled` (the EASE items), not on the catalogue size: the Gram matrix,
its inverse and B are M x M (3 x 8 x M^2 bytes: M=3000 -> ~220 MB, ~3 s to invert on 2 cores); the
user-item matrix is sparse (12 bytes per event). See recommendations.ranking for serving memory.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommendations import ranking
from recommendations.ranking import CollaborativeModel
from retraining.ml.events import EventLog
from retraining.ml.params import TrainingParams

CANDIDATE_BATCH = 1000


def collaborative_fit(*, log: EventLog, mask: np.ndarray, n_modelled: int, l2: float) -> CollaborativeModel:
    """EASE (B = I - P / diag(P), P = (X'X + l2 I)^-1, zero diagonal) on the binary user x item matrix of
    the events in `mask`, restricted to the `n_modelled` active items with the most users.

    Popularity and the modelled items count distinct users, not events: a user repeating events on an item
    counts once, so that one client cannot make an item the most popular (the most-popular baseline and the
    popularity candidates)."""
    return _collaborative_fits(log, mask, n_modelled, l2, item_knn=False)[0]


def collaborative_and_item_knn_fit(
    *, log: EventLog, mask: np.ndarray, n_modelled: int, l2: float
) -> tuple[CollaborativeModel, CollaborativeModel]:
    """collaborative_fit, and the item-kNN baseline's model over the same modelled items (for item_knn_lists):
    item-item cosine similarity from the same X'X, computed once for both."""
    return _collaborative_fits(log, mask, n_modelled, l2, item_knn=True)


def _collaborative_fits(log: EventLog, mask: np.ndarray, n_modelled: int, l2: float, *, item_knn: bool):
    n_items = len(log.item_pks)
    users, items = log.user[mask], log.item[mask]
    reach = _distinct_users(users, items, n_items)
    positive = log.positive()[mask]
    popularity = _distinct_users(users[positive], items[positive], n_items) + reach / (reach.max(initial=0.0) + 1.0)
    eligible = np.flatnonzero(log.item_active & (reach > 0))
    modelled = eligible[np.lexsort((eligible, -reach[eligible]))[:n_modelled]].astype(np.int32)
    ease, similarity = _ease_weights(users, items, modelled, n_items, len(log.user_pks), l2, item_knn=item_knn)
    models = dict(item_pks=log.item_pks, active=log.item_active, modelled=modelled, popularity=popularity)
    knn = CollaborativeModel(weights=similarity, **models) if item_knn else None
    return CollaborativeModel(weights=ease, **models), knn


def _distinct_users(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """How many distinct users each item has among these (user, item) events."""
    pairs = np.unique(users.astype(np.int64) * n_items + items)
    return np.bincount(pairs % n_items, minlength=n_items).astype(np.float64)


def _gram(users, items, modelled, n_items, n_users) -> np.ndarray:
    """X'X of the binary user x modelled-item matrix of these events (dense, M x M)."""
    position = np.full(n_items, -1, dtype=np.int64)
    position[modelled] = np.arange(len(modelled))
    inside = position[items] >= 0
    matrix = sp.csr_matrix(
        (np.ones(int(inside.sum()), dtype=np.float64), (users[inside], position[items[inside]])),
        shape=(n_users, len(modelled)),
    )
    matrix.data[:] = 1.0  # duplicates were summed: back to binary
    return (matrix.T @ matrix).toarray()


def _ease_weights(
    users, items, modelled, n_items, n_users, l2, *, item_knn: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """EASE's B, and with `item_knn` the cosine similarity from the same X'X (computed before EASE overwrites it)."""
    gram = _gram(users, items, modelled, n_items, n_users)
    similarity = _cosine_similarity(gram) if item_knn else None
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    del gram
    weights = inverse / -np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32), similarity


def _cosine_similarity(gram: np.ndarray) -> np.ndarray:
    """Item-item cosine similarity from X'X of the binary matrix, zero diagonal (float32)."""
    norms = np.sqrt(np.diag(gram))
    with np.errstate(divide="ignore", invalid="ignore"):
        similarity = np.nan_to_num(gram / np.outer(norms, norms)).astype(np.float32)
    similarity[np.diag_indices_from(similarity)] = 0.0
    return similarity


def item_knn_lists(
    *, knn: CollaborativeModel, histories: list[np.ndarray], users: np.ndarray, k: int
) -> list[np.ndarray]:
    """The item-kNN baseline's top-k per user, `knn` from collaborative_and_item_knn_fit: item-item cosine
    similarity on the binary user x item matrix of the fitted events (over the collaborative model's modelled
    items, as EASE), a user's score for an item the sum of its similarities to the items in the user's history;
    seen and inactive items excluded."""
    lists = []
    for start in range(0, len(users), CANDIDATE_BATCH):
        batch = users[start : start + CANDIDATE_BATCH]
        found = ranking.candidates_generate(
            knn, histories=[histories[u] for u in batch], n_collaborative=k, n_popular=0
        )
        lists += [c.codes[np.argsort(c.cf_rank, kind="stable")][:k] for c in found]
    return lists


def candidates_for(
    model: CollaborativeModel, histories: list[np.ndarray], users: np.ndarray, params: TrainingParams
) -> list[ranking.Candidates]:
    """Each user's candidates (serving's own candidates_generate), computed in batches of users."""
    result = []
    for start in range(0, len(users), CANDIDATE_BATCH):
        batch = users[start : start + CANDIDATE_BATCH]
        result += ranking.candidates_generate(
            model,
            histories=[histories[u] for u in batch],
            n_collaborative=params.n_collaborative,
            n_popular=params.n_popular,
        )
    return result


def collaborative_reindex(model: CollaborativeModel, *, item_pks: np.ndarray, active: np.ndarray) -> CollaborativeModel:
    """The same collaborative model expressed in another catalogue's codes (by Item primary key)."""
    code_of = {int(pk): code for code, pk in enumerate(item_pks.tolist())}
    modelled_pks = model.item_pks[model.modelled].tolist()
    keep = [position for position, pk in enumerate(modelled_pks) if int(pk) in code_of]
    popularity = np.zeros(len(item_pks), dtype=np.float64)
    for old_code, pk in enumerate(model.item_pks.tolist()):
        if int(pk) in code_of:
            popularity[code_of[int(pk)]] = model.popularity[old_code]
    return CollaborativeModel(
        item_pks=np.asarray(item_pks, dtype=np.int64),
        active=np.asarray(active, dtype=bool),
        modelled=np.array([code_of[int(modelled_pks[p])] for p in keep], dtype=np.int32),
        weights=model.weights[np.ix_(keep, keep)],
        popularity=popularity,
    )
