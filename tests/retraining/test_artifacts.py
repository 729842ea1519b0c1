import json

import numpy as np
import pytest

from recommendations import ranking
from retraining.ml.metrics import metric_keys, ranking_metrics
from retraining.ml.params import TrainingParams
from retraining.ml.regressor import BIAS_FEATURES
from retraining.ml.replay import evaluation_run
from retraining.ml.split import split_compute
from retraining.services.training import model_train
from tests.retraining.factories import event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    log = event_log_from(learnable_dataset(users=100, per_user=24))
    directory = tmp_path_factory.mktemp("model")
    result = model_train(output_dir=directory, log=log, progress=None, params=PARAMS)
    return log, directory, result


def test_the_model_directory_holds_lightgbm_text_files_numeric_arrays_and_json(trained):
    _, directory, _ = trained
    for name in (ranking.RANKER_FILE, ranking.REGRESSOR_FILE):
        assert (directory / name).read_text().startswith("tree\n")
    with np.load(directory / ranking.COLLABORATIVE_FILE, allow_pickle=False) as arrays:
        assert arrays["weights"].dtype == np.float32
    json.loads((directory / ranking.ID_MAPS_FILE).read_text())
    assert not any(path.read_bytes().startswith(b"\x80") for path in directory.iterdir())


def test_the_manifest_describes_features_window_data_drift_references_and_scores(trained):
    _, directory, result = trained
    manifest = json.loads((directory / ranking.MANIFEST_FILE).read_text())
    assert manifest["features"]["ranker"] == ranking.RANKER_FEATURES
    assert manifest["rating_model"]["kind"] == "bias+residual"
    assert manifest["features"]["regressor"] == ranking.REGRESSOR_FEATURES + BIAS_FEATURES
    assert {"min_event_time", "max_event_time", "until"} <= manifest["training_window"].keys()
    assert {"users", "items", "events", "train_events", "holdout_events"} <= manifest["dataset"].keys()
    assert manifest["metrics"]["ndcg@10"] == pytest.approx(result.metrics["ndcg@10"])
    assert {"popularity", "ease", "itemknn", "global_mean", "bias"} == manifest["baselines"].keys()
    assert manifest["baselines"]["bias"]["l2"] == manifest["rating_model"]["bias_l2"]
    assert manifest["params"]["ranker"]["objective"] == "lambdarank"
    reference = manifest["reference_distributions"]["ranker"]
    assert reference.keys() == set(ranking.RANKER_FEATURES)
    popularity = reference["item_event_count"]
    assert len(popularity["edges"]) >= 3
    assert sum(popularity["shares"]) + popularity["nan_share"] == pytest.approx(1.0)


def test_the_loaded_model_reproduces_the_reported_ndcg(trained):
    log, directory, result = trained
    model = ranking.trained_model_load(directory)
    split = split_compute(log, PARAMS)
    evaluation = evaluation_run(
        log, split, PARAMS, model.category_share, model.collaborative, model.ranker, with_regressor=False
    )
    scores = ranking_metrics(
        recommended=evaluation.ranked["ranker"],
        positives=evaluation.positives,
        k=10,
        n_active_items=int(log.item_active.sum()),
    )
    assert metric_keys(scores, 10)["ndcg@10"] == pytest.approx(result.metrics["ndcg@10"])


def test_explanations_name_the_features_that_moved_the_score(trained):
    log, directory, _ = trained
    model = ranking.trained_model_load(directory)
    found = ranking.candidates_generate(
        model.collaborative, histories=[np.array([0, 1, 2])], n_collaborative=20, n_popular=5
    )[0]
    from recommendations import features

    matrix = ranking.ranker_feature_matrix(
        model.collaborative,
        candidates=found,
        user=features.UserState(),
        items=ranking.candidate_items(found.codes, item_states={}, item_categories={}),
        at=float(log.ts[-1]),
        category_share=model.category_share,
    )
    explained = ranking.ranker_explain(model.ranker, matrix)
    assert len(explained) == len(found.codes)
    assert all(name in ranking.RANKER_FEATURES for row in explained for name, _ in row)
    assert not np.isin(found.codes, [0, 1, 2]).any()
