"""The item-kNN baseline and the candidate stage's recall, computed beside every evaluation."""

import numpy as np

from recommendations.ranking import SOURCE_COLLABORATIVE, SOURCE_POPULAR, Candidates
from retraining.ml.candidates import collaborative_and_item_knn_fit, item_knn_lists
from retraining.ml.metrics import candidate_order, candidate_recall
from tests.retraining.factories import RawDataset, RawEvent, event_log_from


def _log(histories: list[list[int]], n_items: int, inactive: tuple[int, ...] = ()):
    events = [
        RawEvent(u, item, "like", None, float(u * 100 + t))
        for u, items in enumerate(histories)
        for t, item in enumerate(items)
    ]
    active = np.ones(n_items, dtype=bool)
    active[list(inactive)] = False
    return event_log_from(RawDataset(len(histories), [()] * n_items, events), active=active)


def test_item_knn_recommends_the_unseen_item_most_similar_by_cosine_to_the_users_history():
    # Item 0 and item 1 always go together; item 2 goes with 0 only once among many users of item 2.
    histories = [[0, 1]] * 4 + [[0, 2], [2, 3], [2, 3], [2, 3], [0]]
    log = _log(histories, n_items=4)
    everything = np.ones(len(log), dtype=bool)
    _, knn = collaborative_and_item_knn_fit(log=log, mask=everything, n_modelled=10, l2=1.0)
    seen = [np.array([0]), np.array([2])]
    lists = item_knn_lists(knn=knn, histories=seen, users=np.array([0, 1]), k=2)
    # cos(0,1) = 4/sqrt(6*4) = 0.82 > cos(0,2) = 1/sqrt(6*4) = 0.20; from item 2: item 3 (0.87) before item 0
    assert lists[0].tolist() == [1, 2]
    assert lists[1].tolist() == [3, 0]


def test_item_knn_never_recommends_a_seen_or_inactive_item():
    log = _log([[0, 1, 2]] * 3 + [[1, 3]], n_items=4, inactive=(2,))
    everything = np.ones(len(log), dtype=bool)
    _, knn = collaborative_and_item_knn_fit(log=log, mask=everything, n_modelled=10, l2=1.0)
    lists = item_knn_lists(knn=knn, histories=[np.array([0, 1])], users=np.array([0]), k=10)
    assert lists[0].tolist() == [3]


def test_candidate_order_puts_the_collaborative_picks_by_rank_before_the_popular_extras():
    found = Candidates(
        codes=np.array([1, 4, 6, 9]),
        cf_score=np.array([0.5, np.nan, 0.9, 0.1], dtype=np.float32),
        cf_rank=np.array([2, np.nan, 1, 3], dtype=np.float32),
        source=np.array(
            [SOURCE_COLLABORATIVE, SOURCE_POPULAR, SOURCE_COLLABORATIVE | SOURCE_POPULAR, SOURCE_COLLABORATIVE],
            dtype=np.int8,
        ),
    )
    popularity_rank = np.arange(10, 0, -1).astype(np.float32)  # code 9 the most popular
    assert candidate_order(found, popularity_rank=popularity_rank).tolist() == [6, 1, 9, 4]


def test_candidate_recall_counts_positives_in_the_first_n_candidates_and_in_the_whole_pool():
    pools = [np.array([5, 6, 7, 8]), np.array([1, 2]), np.array([3])]
    positives = [np.array([6, 8]), np.array([9]), np.array([], dtype=np.int64)]  # the third user is skipped
    result = candidate_recall(pools=pools, positives=positives, n=2)
    assert result == {"candidate_recall@2": 0.25, "candidate_recall": 0.5, "candidates_per_user": 3.0}
