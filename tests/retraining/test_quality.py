from pathlib import Path

import pytest

from retraining.services.dataset import event_log_load
from retraining.ml.params import TrainingParams
from retraining.services.training import training_run_execute
from tests.retraining.factories import event_log_from, learnable_dataset

MOVIELENS_SMALL = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ml-latest-small"


def test_the_ranker_beats_both_baselines_on_a_learnable_synthetic_dataset():
    log = event_log_from(learnable_dataset(seed=3))
    result = training_run_execute(output_dir=None, log=log, progress=None, params=TrainingParams(num_threads=1))
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
    result = training_run_execute(output_dir=None, log=event_log_load(), progress=None)
    ndcg = result.metrics["ndcg@10"]
    popularity, ease = result.baselines["popularity"]["ndcg@10"], result.baselines["ease"]["ndcg@10"]
    assert ndcg >= 1.10 * max(popularity, ease)
    assert ndcg >= 1.5 * popularity
    assert ndcg < 0.3 and result.metrics["r2"] < 0.6  # far better would mean a leak
    assert result.metrics["rmse"] <= 0.98 * result.baselines["bias"]["rmse"]  # measured 0.8678 vs 0.8943
