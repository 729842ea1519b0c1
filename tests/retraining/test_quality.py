from pathlib import Path

import pytest

from retraining.ml.params import TrainingParams
from retraining.services.dataset import event_log_load
from retraining.services.training import model_train
from tests.retraining.factories import event_log_from, learnable_dataset

MOVIELENS_SMALL = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ml-latest-small"


def test_the_ranker_beats_both_baselines_on_a_learnable_synthetic_dataset():
    log = event_log_from(learnable_dataset(seed=3))
    result = model_train(output_dir=None, log=log, progress=None, params=TrainingParams(num_threads=1))
    ndcg = result.metrics["ndcg@10"]
    assert ndcg > 1.5 * result.baselines["popularity"]["ndcg@10"]
    assert ndcg > 1.1 * result.baselines["ease"]["ndcg@10"]
    assert 0.0 < result.metrics["r2"] < 0.95  # rating depends on taste plus noise: learnable, not exact
    assert result.metrics["rmse"] <= 0.98 * result.baselines["bias"]["rmse"]  # taste: beyond user + item biases


@pytest.mark.slow
@pytest.mark.skipif(not MOVIELENS_SMALL.is_dir(), reason="ml-latest-small is not available")
def test_on_movielens_small_the_ranker_beats_the_stronger_baseline_by_ten_percent_and_popularity_by_half(db):
    movielens = pytest.importorskip("recommendations.services.movielens")
    movielens.movielens_import(path=MOVIELENS_SMALL, progress=False)
    result = model_train(output_dir=None, log=event_log_load(), progress=None)
    ndcg = result.metrics["ndcg@10"]
    popularity, ease = result.baselines["popularity"]["ndcg@10"], result.baselines["ease"]["ndcg@10"]
    assert ndcg >= 1.10 * max(popularity, ease)
    assert ndcg >= 1.5 * popularity
    assert ndcg < 0.3 and result.metrics["r2"] < 0.6  # far better would mean a leak
    assert result.metrics["rmse"] <= 0.98 * result.baselines["bias"]["rmse"]  # measured 0.8678 vs 0.8943


@pytest.mark.django_db
def test_on_the_demos_default_synthetic_timeline_the_first_model_beats_most_popular(tmp_path):
    """`make demo`'s v1: the first 70% of the default synthetic set (300 users, 500 items, 30,000 events), imported
    as the demo imports it; the ranker and most-popular are scored on the same holdout by the same code."""
    from datetime import date

    from recommendations.services.movielens import movielens_import, movielens_ratings
    from recommendations.services.synthetic import synthetic_dataset_write

    synthetic_dataset_write(
        output=tmp_path, users=300, items=500, events=30_000, drift_at=0.8, seed=7, start=date(2025, 1, 1)
    )
    ratings = movielens_ratings(path=tmp_path)
    cut = ratings[int(len(ratings) * 0.7)].moment
    movielens_import(path=tmp_path, progress=False, before=cut)
    result = model_train(
        output_dir=None, log=event_log_load(until=cut), progress=None, params=TrainingParams(num_threads=1)
    )
    popularity = result.baselines["popularity"]["ndcg@10"]
    # the gate promotes a first model above most-popular: 0.1450 against 0.1386 when written (users numbered by
    # external id), a thin margin the 1.5x target is far from
    assert result.metrics["ndcg@10"] > popularity
    assert result.metrics["ndcg@10"] > result.baselines["ease"]["ndcg@10"]
