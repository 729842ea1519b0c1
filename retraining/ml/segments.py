"""User segments by history length, and the ranking metrics of each segment. No Django.

A holdout user's segment is the number of training events they have before their holdout starts: the history
the model had when it ranked them. Boundaries (README, "Evaluation by user segment"):
- new: 0–9. A holdout needs 5 events (TrainingParams.min_user_events), so no evaluated user has fewer than 4:
  a "0–4" segment would hold only users with exactly 4 and would almost never reach the minimum to be checked.
  Under 10 the history is shorter than one list, so collaborative candidates rest on a handful of items.
- light: 10–49, heavy: 50 and over. 50 is near the median history on both reference datasets
  (ml-latest-small and the default synthetic timeline), so both segments are large enough to be checked.
"""

from __future__ import annotations

import numpy as np

from retraining.ml.events import EventLog
from retraining.ml.metrics import ranking_metrics
from retraining.ml.split import Split

# (name, fewest training events, most training events or None for no upper bound), in order.
SEGMENTS = (("new", 0, 9), ("light", 10, 49), ("heavy", 50, None))
SEGMENT_METRICS = ("ndcg", "recall", "hit_rate")


def user_history_counts(log: EventLog, split: Split, *, users: np.ndarray) -> np.ndarray:
    """Per user code in `users`: their training events strictly before their holdout starts (what the replay
    has applied when it ranks them)."""
    cutoff = split.cutoff[log.user]
    known = split.train & (log.ts < np.where(np.isnan(cutoff), -np.inf, cutoff))
    return np.bincount(log.user[known], minlength=len(log.user_pks))[np.asarray(users, dtype=np.int64)]


def segment_names(counts: np.ndarray) -> np.ndarray:
    """The segment of each history length."""
    counts = np.asarray(counts)
    names = np.empty(len(counts), dtype=object)
    for name, low, high in SEGMENTS:
        names[(counts >= low) & (counts <= (np.inf if high is None else high))] = name
    return names


def segment_bounds(name: str) -> str:
    """A segment's range of training events as text: "10–49", "50+"."""
    low, high = next((low, high) for segment, low, high in SEGMENTS if segment == name)
    return f"{low}+" if high is None else f"{low}–{high}"


def segments_table(
    *, lists: dict[str, list[np.ndarray]], positives: list[np.ndarray], segments: np.ndarray, k: int
) -> dict[str, dict]:
    """Per segment: its bounds, its users and, per model, NDCG, recall and hit rate at k over those users (no
    metrics for a segment without users). `lists[model][i]`, `positives[i]` and `segments[i]` describe the same
    evaluated user i."""
    table = {}
    for name, _, _ in SEGMENTS:
        members = np.flatnonzero(segments == name)
        row = {"training_events": segment_bounds(name), "users": len(members)}
        for model, top in lists.items() if len(members) else ():
            scored = ranking_metrics(
                recommended=[top[i] for i in members], positives=[positives[i] for i in members], k=k, n_active_items=0
            )
            row[model] = {f"{metric}@{k}": float(scored[metric]) for metric in SEGMENT_METRICS}
        table[name] = row
    return table
