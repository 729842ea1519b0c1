"""The rating model against its baselines: the bias model alone when the trees have too little to learn from,
and a stored version re-scored to the RMSE it reported (its biases refitted with its λ on the same events)."""

import lightgbm as lgb
import numpy as np
import pytest

from recommendations import ranking
from recommendations.serving.loading import artifact_models_check
from retraining.ml.params import TrainingParams
from retraining.ml.regressor import rating_model_of
from retraining.services.rescoring import models_score_on_holdout
from retraining.services.training import model_train
from tests.retraining.factories import event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)


def test_with_too_few_ratings_to_learn_a_residual_from_the_bias_model_alone_is_the_rating_model(tmp_path):
    log = event_log_from(learnable_dataset(users=40, per_user=12))
    result = model_train(output_dir=tmp_path, log=log, progress=None, params=PARAMS)
    assert result.manifest["rating_model"]["kind"] == "bias"
    assert not (tmp_path / ranking.REGRESSOR_FILE).exists()
    assert result.metrics["rmse"] == pytest.approx(result.baselines["bias"]["rmse"])
    artifact_models_check(files={path.name: path.read_bytes() for path in tmp_path.iterdir()})  # registrable
    rescored = models_score_on_holdout(
        until=None, params=PARAMS, log=log, models={"model": ranking.trained_model_load(tmp_path)}
    )
    assert rescored.models["model"].metrics["rmse"] == pytest.approx(result.metrics["rmse"])


def test_a_stored_version_rescored_on_its_holdout_reports_the_rmse_and_baselines_it_was_trained_with(tmp_path):
    log = event_log_from(learnable_dataset(users=160, per_user=30, seed=5))
    result = model_train(output_dir=tmp_path, log=log, progress=None, params=PARAMS)
    assert result.manifest["rating_model"]["kind"] == "bias+residual"
    rescored = models_score_on_holdout(
        until=None, params=PARAMS, log=log, models={"model": ranking.trained_model_load(tmp_path)}
    )
    assert rescored.models["model"].metrics["rmse"] == pytest.approx(result.metrics["rmse"], abs=1e-6)
    assert rescored.rating_baselines["bias"]["rmse"] == pytest.approx(result.baselines["bias"]["rmse"])
    assert result.metrics["rmse"] < result.baselines["bias"]["rmse"]


def test_a_version_from_before_the_biases_is_rescored_with_its_regressor_alone(tmp_path):
    log = event_log_from(learnable_dataset(users=160, per_user=30, seed=5))
    model_train(output_dir=tmp_path, log=log, progress=None, params=PARAMS)
    legacy = ranking.trained_model_load(tmp_path)
    del legacy.manifest["rating_model"]  # as written before the biases: trees on REGRESSOR_FEATURES predict alone
    rng = np.random.default_rng(0)
    matrix = rng.random((400, len(ranking.REGRESSOR_FEATURES)))
    legacy.regressor = lgb.train(
        {"objective": "regression", "verbosity": -1, "num_threads": 1},
        lgb.Dataset(matrix, 3.0 + matrix[:, 0]),
        num_boost_round=5,
    )
    assert rating_model_of(booster=legacy.regressor, manifest=legacy.manifest).kind == "direct"
    scores = models_score_on_holdout(until=None, params=PARAMS, log=log, models={"legacy": legacy})
    assert 0 < scores.models["legacy"].metrics["rmse"] < 5
    assert scores.rating_baselines == {}  # no λ of its own to fit the baselines with
