"""The ranking pipeline, pure: a model, the item snapshot and the user's state in, scored items out. It reads
no database and holds no state; the one read it needs (which items are inactive now, when the snapshot's
flags may be stale) is a function the caller passes in."""

from collections.abc import Callable

import numpy as np

from recommendations import features, ranking
from recommendations.item_snapshot import ItemSnapshot
from recommendations.serving.loading import ServingModel

InactiveOf = Callable[[list[int]], set[int]]  # which of these Item keys are inactive now


def ranked_items(
    *,
    model: ServingModel,
    snapshot: ItemSnapshot,
    user: features.UserState,
    seen: set[int],
    excluded: set[int],
    category: str | None,
    k: int,
    at: float,
    explain: bool,
    inactive_of: InactiveOf | None,
    checkpoint: Callable[[], None] = lambda: None,
) -> list[dict] | None:
    """The model's top k of its candidates for the user that the snapshot holds as active (and in
    `category`), neither seen nor excluded; None when no candidate is left. With `inactive_of` the served
    items' active flags are re-read through it (see first_active). `checkpoint` is called between the
    stages (a shadow job uses it to give way to a live request)."""
    collaborative = model.trained.collaborative
    found = ranking.candidates_generate(
        collaborative,
        histories=[collaborative.codes_of(np.fromiter(seen, dtype=np.int64, count=len(seen)))],
        n_collaborative=model.params["n_collaborative"],
        n_popular=model.params["n_popular"],
    )[0]
    checkpoint()
    pks = collaborative.item_pks[found.codes]
    rows = snapshot.rows_of(pks)
    keep = snapshot.servable(rows, category=category)
    if excluded:  # np.isin costs ~15 us even for nothing to exclude, the usual request
        keep &= ~np.isin(pks, list(excluded))
    if not keep.any():
        return None
    found = ranking.Candidates(found.codes[keep], found.cf_score[keep], found.cf_rank[keep], found.source[keep])
    pks, rows = pks[keep], rows[keep]
    candidate_items = ranking.CandidateItems(
        columns=snapshot.columns[rows], categories=snapshot.categories[rows], category_names=snapshot.category_names
    )
    matrix = ranking.ranker_feature_matrix(
        collaborative,
        candidates=found,
        user=user,
        at=at,
        items=candidate_items,
        category_share=model.trained.category_share,
    )
    checkpoint()
    scores = model.trained.blend.scores(model.scores(matrix), matrix)
    checkpoint()
    order = np.lexsort((found.codes, -scores))
    order = order[first_active(pks[order], k, inactive_of=inactive_of)]
    explanations = ranking.ranker_explain(model.trained.ranker, matrix[order]) if explain else None
    served = []
    for position, index in enumerate(order.tolist()):
        item = {"_pk": int(pks[index]), "item_id": snapshot.external_ids[rows[index]], "score": float(scores[index])}
        if explanations is not None:
            item["explanation"] = {
                "sources": _sources(int(found.source[index])),
                "top_features": [{"feature": name, "contribution": value} for name, value in explanations[position]],
            }
        served.append(item)
    return served


def first_active(pks: np.ndarray, k: int, *, inactive_of: InactiveOf | None) -> list[int]:
    """Positions of the first k of these items (all active in the snapshot) that are active now. Without
    `inactive_of` (nothing deactivated since the snapshot) those are the first k. Otherwise the snapshot's
    flags may be stale, so the flags of the items about to be served are read again: one read of k keys, and
    one more for the shortfall each time some of them turn out inactive."""
    if inactive_of is None:
        return list(range(min(k, len(pks))))
    chosen: list[int] = []
    start = 0
    while len(chosen) < k and start < len(pks):
        stop = start + k - len(chosen)
        window = pks[start:stop].tolist()
        inactive = inactive_of(window)
        chosen += [start + offset for offset, pk in enumerate(window) if pk not in inactive]
        start = stop
    return chosen


def _sources(flags: int) -> list[str]:
    named = ((ranking.SOURCE_COLLABORATIVE, "collaborative"), (ranking.SOURCE_POPULAR, "popular"))
    return [name for bit, name in named if flags & bit]


def popular_items(
    *,
    snapshot: ItemSnapshot,
    blocked: set[int],
    category: str | None,
    k: int,
    at: float,
    inactive_of: InactiveOf | None,
) -> list[dict]:
    """Trending first: decayed 7-day distinct users (its order does not depend on the clock), then all-time;
    scored at `at` (UNIX seconds)."""
    rows = snapshot.trending[~np.isin(snapshot.pks[snapshot.trending], list(blocked))]
    if category:
        rows = rows[snapshot.in_category(rows, category)]
    rows = rows[first_active(snapshot.pks[rows], k, inactive_of=inactive_of)]
    return [
        {"_pk": int(snapshot.pks[row]), "item_id": snapshot.external_ids[row], "score": snapshot.trend_score(row, at)}
        for row in rows.tolist()
    ]
