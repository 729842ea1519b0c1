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
    max_regressor_examples: int = 300_000
    shuffle_labels: bool = False  # a leakage guard: a ranker trained on shuffled labels must not beat popularity
