"""The fixed evaluation protocol's splits (docs/ARCHITECTURE.md), all per user, by (time, id).

- outer: the last 20% of each user's events (users with >= 5) is the holdout; the rest is the training
  portion. Nothing of the holdout feeds a model, a feature or a popularity count.
- inner: inside the training portion, each user's last 20% is the ranker's label window; the collaborative
  model and the features for ranker training come only from the training portion minus the label windows
  (the "fit" portion), at the start of each user's label window. Evaluation mirrors this one level up:
  EASE refitted on the whole training portion, features at the start of each user's holdout.
A refit on all data (after a gate has passed) has no outer split: every event is in the training portion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from retraining.ml.events import EventLog
from retraining.ml.params import TrainingParams


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


@dataclass
class Split:
    train: np.ndarray  # bool per event: the training portion
    holdout: np.ndarray
    cutoff: np.ndarray  # per user: start of the holdout
    fit: np.ndarray  # training portion minus the label windows
    label: np.ndarray  # the label windows
    label_start: np.ndarray  # per user


def split_compute(log: EventLog, params: TrainingParams, *, holdout: bool = True) -> Split:
    """`holdout=False` (a refit on all data): nothing is held out, every event is in the training portion."""
    n_users = len(log.user_pks)
    everything = np.ones(len(log), dtype=bool)
    options = dict(
        user=log.user, ts=log.ts, n_users=n_users, fraction=params.holdout_fraction, min_events=params.min_user_events
    )
    outer = holdout_split(mask=everything if holdout else ~everything, **options)
    train = ~outer.holdout
    inner = holdout_split(mask=train, **options)
    return Split(train, outer.holdout, outer.cutoff, train & ~inner.holdout, inner.holdout, inner.cutoff)


def split_earlier(split: Split, log: EventLog, params: TrainingParams) -> Split:
    """The inner split one step back in time: the fit portion becomes the training portion and each user's
    last share of it the label window (the ranker's earlier windows, see ranker.ranker_examples_windows)."""
    inner = holdout_split(
        user=log.user,
        ts=log.ts,
        mask=split.fit,
        n_users=len(log.user_pks),
        fraction=params.holdout_fraction,
        min_events=params.min_user_events,
    )
    return Split(split.fit, split.label, split.label_start, split.fit & ~inner.holdout, inner.holdout, inner.cutoff)


def holdout_after(split: Split, log: EventLog, *, moment: datetime) -> Split:
    """The split restricted to the held-out events strictly after `moment` (events a model trained up to
    `moment` cannot have seen). A user's earlier held-out events become known history, as they would be
    when serving, and the user is ranked at their first held-out event after `moment`: ranked at the old
    start, the items they consumed before `moment` would count as misses. Users with none drop out."""
    holdout = split.holdout & (log.ts > moment.timestamp())
    held = np.flatnonzero(holdout)
    users, first = np.unique(log.user[held], return_index=True)
    cutoff = np.full(len(log.user_pks), np.nan)
    cutoff[users] = log.ts[held[first]]
    return replace(split, train=~holdout, holdout=holdout, cutoff=cutoff)


def histories_by_user(log: EventLog, mask: np.ndarray) -> list[np.ndarray]:
    """Per user code, the sorted distinct catalogue codes of the user's events in `mask`."""
    users, items = log.user[mask], log.item[mask]
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(len(log.user_pks) + 1))
    return [np.unique(items[bounds[u] : bounds[u + 1]]).astype(np.int64) for u in range(len(log.user_pks))]
