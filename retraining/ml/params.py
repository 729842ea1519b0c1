"""The training configuration, recorded in every manifest (a refit trains again with the same values)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingParams:
    k: int = 10
    holdout_fraction: float = 0.2
    min_user_events: int = 5
    ease_items: int = 3000
    ease_l2: float = 250.0
    # Candidates per user: the top EASE items and the most popular ones. 100 + 30 scored as well as 200 + 50
    # offline (NDCG@10 on ml-latest-small 0.132/0.131 vs 0.128/0.126 over two seeds; synthetic 300k events
    # 0.162 vs 0.163) with half the rows for serving to build and score.
    n_collaborative: int = 100
    n_popular: int = 30
    num_threads: int = 2
    seed: int = 42
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    max_rounds: int = 400
    min_rounds: int = 50
    early_stopping_rounds: int = 50
    validation_fraction: float = 0.2
    max_ranker_users: int = 5_000
    # The ranker's own regularisation. A few hundred queries (a small timeline) is little for lambdarank: with 31
    # leaves, 50 examples a leaf and at least 50 trees it memorised its label windows (in-window NDCG@10 0.40
    # against popularity's 0.16) and lost to most-popular on the holdout. Leaves grow with the queries
    # (ranker_num_leaves), bagging and column sampling decorrelate the trees, and early stopping may stop at 10.
    ranker_min_data_in_leaf: int = 100
    ranker_lambda_l2: float = 10.0
    ranker_feature_fraction: float = 0.7
    ranker_bagging_fraction: float = 0.8
    ranker_min_rounds: int = 10
    ranker_queries_per_leaf: int = 100
    ranker_objective: str = "lambdarank"  # or "binary" (positive or not), one of tuning.RANKER_SETTINGS
    # Earlier label windows are added while the ranker has fewer queries than this (ranker_examples_windows).
    label_windows: int = 3
    min_ranker_groups: int = 2_000
    # Below min_ranker_groups queries the ranker's settings (earlier windows or not, how much regularisation) are
    # chosen per training run among retraining.ml.tuning.RANKER_SETTINGS on the latest label window, inside the
    # training portion; the values above are the defaults of a large timeline (and of a run that chose "scaled").
    ranker_selection: bool = True
    # The popularity prior's share in the score candidates are ranked by (ranker.ranker_blend_fit): 0 is the ranker
    # alone. Chosen with the settings above on a small timeline (tuning.POPULARITY_WEIGHTS); a large one keeps 0.
    ranker_popularity_weight: float = 0.0
    max_regressor_examples: int = 300_000
    shuffle_labels: bool = False  # a leakage guard: a ranker trained on shuffled labels must not beat popularity
