"""Fitting the candidate stage: EASE over the most active items and popularity over the whole catalogue.

Memory and time depend on M = `n_modelled` (the EASE items), not on the catalogue size: the Gram matrix,
its inverse and B are M x M (3 x 8 x M^2 bytes: M=3000 -> ~220 MB, ~3 s to invert on 2 cores); the
user-item matrix is sparse (12 bytes per event). See recommendations.ranking for serving memory.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommendations.ranking import CollaborativeModel
from retraining.services.dataset import EventLog


def collaborative_fit(*, log: EventLog, mask: np.ndarray, n_modelled: int, l2: float) -> CollaborativeModel:
    """EASE (B = I - P / diag(P), P = (X'X + l2 I)^-1, zero diagonal) on the binary user x item matrix of
    the events in `mask`, restricted to the `n_modelled` active items with the most events."""
    n_items = len(log.item_pks)
    users, items = log.user[mask], log.item[mask]
    events = np.bincount(items, minlength=n_items).astype(np.float64)
    positives = np.bincount(items, weights=log.positive()[mask], minlength=n_items)
    popularity = positives + events / (events.max(initial=0.0) + 1.0)
    eligible = np.flatnonzero(log.item_active & (events > 0))
    modelled = eligible[np.lexsort((eligible, -events[eligible]))[:n_modelled]].astype(np.int32)
    return CollaborativeModel(
        item_pks=log.item_pks,
        active=log.item_active,
        modelled=modelled,
        weights=_ease_weights(users, items, modelled, n_items, len(log.user_pks), l2),
        popularity=popularity,
    )


def _ease_weights(users, items, modelled, n_items, n_users, l2) -> np.ndarray:
    position = np.full(n_items, -1, dtype=np.int64)
    position[modelled] = np.arange(len(modelled))
    inside = position[items] >= 0
    matrix = sp.csr_matrix(
        (np.ones(int(inside.sum()), dtype=np.float64), (users[inside], position[items[inside]])),
        shape=(n_users, len(modelled)),
    )
    matrix.data[:] = 1.0  # duplicates were summed: back to binary
    gram = (matrix.T @ matrix).toarray()
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    del gram
    weights = inverse / -np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)
