"""The small-data ranker's settings are chosen on a validation split inside the training portion
(retraining.ml.tuning): never on the holdout, the same choice for the same data, kept by a refit."""

from dataclasses import replace

import numpy as np
import pytest

from recommendations import ranking
from retraining.ml.candidates import collaborative_fit
from retraining.ml.events import EVENT_TYPE_CODE
from retraining.ml.metrics import ranking_metrics_at
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import ranker_fit
from retraining.ml.replay import evaluation_run
from retraining.ml.split import split_compute
from retraining.ml.steps import LocalSteps
from retraining.ml.tuning import POPULARITY_WEIGHTS, RANKER_SETTINGS, ranker_setting_select
from retraining.services.training import model_refit, model_train
from tests.retraining.factories import event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)


@pytest.fixture(scope="module")
def learnable_log():
    return event_log_from(learnable_dataset(seed=3))


def _selection(log, params=PARAMS, fit=ranker_fit):
    split = split_compute(log, params)
    model = collaborative_fit(log=log, mask=split.fit, n_modelled=params.ease_items, l2=params.ease_l2)
    windows = LocalSteps(log, split).ranker_examples(params, log.category_share(), model)
    return ranker_setting_select(windows, log=log, split=split, params=params, fit=fit), windows, split


@pytest.fixture(scope="module")
def selected(learnable_log):
    return _selection(learnable_log)


def _fixed(name: str) -> TrainingParams:
    return replace(PARAMS, **RANKER_SETTINGS[name], ranker_selection=False)


def _holdout_favouring(log, lists_by_user: dict[int, np.ndarray], holdout: np.ndarray):
    """The log with each evaluated user's held-out events turned into 5-star ratings of the items in
    `lists_by_user` (one setting's top 10 at the user's holdout start): a holdout that favours that setting."""
    trap = log.subset(np.ones(len(log), bool))
    trap.item, trap.value, trap.event_type = trap.item.copy(), trap.value.copy(), trap.event_type.copy()
    for user, items in lists_by_user.items():
        held = np.flatnonzero(holdout & (log.user == user))
        trap.item[held] = np.resize(items, len(held))
        trap.value[held] = np.float32(5.0)
        trap.event_type[held] = EVENT_TYPE_CODE["rating"]
    return trap


@pytest.mark.slow
def test_a_holdout_that_favours_another_setting_does_not_change_the_choice(learnable_log, selected, tmp_path):
    selection, _, split = selected
    assert selection.chosen is not None
    other = min(selection.validation_ndcg, key=selection.validation_ndcg.get)
    assert other != selection.chosen
    model_train(output_dir=tmp_path, log=learnable_log, progress=None, params=_fixed(other))
    trained = ranking.trained_model_load(tmp_path)
    evaluation = evaluation_run(
        learnable_log, split, PARAMS, learnable_log.category_share(), trained.collaborative, trained.ranker, False
    )  # the other setting's top 10 per evaluated user at the start of their holdout
    trap = _holdout_favouring(
        learnable_log, dict(zip(evaluation.users.tolist(), evaluation.ranked["ranker"])), split.holdout
    )

    def on_trap(name):
        return model_train(output_dir=None, log=trap, progress=None, params=_fixed(name)).metrics["ndcg@10"]

    assert on_trap(other) > on_trap(selection.chosen) + 0.1, "the trap must favour the other setting on the holdout"
    again, _, _ = _selection(trap)
    assert again.chosen == selection.chosen
    assert again.params.ranker_popularity_weight == selection.params.ranker_popularity_weight
    assert again.validation_ndcg == selection.validation_ndcg
    assert again.validation_ndcg_by_weight == selection.validation_ndcg_by_weight


def test_the_settings_train_on_earlier_windows_and_are_scored_on_the_latest_before_every_users_holdout(
    learnable_log, selected
):
    _, windows, split = selected
    seen = []

    def recording_fit(examples, params):
        seen.append(examples)
        return ranker_fit(examples, params)

    selection, _, _ = _selection(learnable_log, fit=recording_fit)
    assert len(seen) == len(RANKER_SETTINGS)
    assert all(len(examples.groups) and (examples.windows >= 1).all() for examples in seen)
    validated = np.unique(windows.users[windows.windows == 0])
    assert selection.validation_users >= len(validated) > 50
    label_times, label_users = learnable_log.ts[split.label], learnable_log.user[split.label]
    assert (label_times < split.cutoff[label_users]).all()  # window 0, the validation, ends before the holdout
    assert (split.label_start[validated] < split.cutoff[validated]).all()


def test_the_same_data_gives_the_same_choice_and_scores(learnable_log, selected):
    again, _, _ = _selection(learnable_log)
    assert again.chosen == selected[0].chosen
    assert again.validation_ndcg == selected[0].validation_ndcg
    assert len(set(again.validation_ndcg.values())) > 1  # the settings do differ on this data


def test_every_setting_is_scored_at_every_popularity_weight_and_the_best_pair_is_chosen(selected):
    selection = selected[0]
    table = selection.validation_ndcg_by_weight
    assert list(table) == list(RANKER_SETTINGS)
    assert all(list(by_weight) == [str(w) for w in POPULARITY_WEIGHTS] for by_weight in table.values())
    best = max(score for by_weight in table.values() for score in by_weight.values())
    assert table[selection.chosen][str(selection.params.ranker_popularity_weight)] == best
    # the whole prior is most-popular's order, whichever booster it is blended with
    assert len({by_weight["1.0"] for by_weight in table.values()}) == 1
    assert len({score for by_weight in table.values() for score in by_weight.values()}) > len(RANKER_SETTINGS)


@pytest.mark.slow
def test_the_holdout_is_ranked_by_the_blend_the_model_directory_records(learnable_log, tmp_path):
    params = replace(PARAMS, ranker_selection=False, ranker_popularity_weight=0.6)
    result = model_train(output_dir=tmp_path, log=learnable_log, progress=None, params=params)
    trained = ranking.trained_model_load(tmp_path)
    assert trained.blend.prior_coefficient > 0.0 and trained.blend.ranker_coefficient > 0.0
    split = split_compute(learnable_log, params)
    n_active = int(learnable_log.item_active.sum())

    def ndcg(blend):
        evaluation = evaluation_run(
            learnable_log, split, params, learnable_log.category_share(), trained.collaborative, trained.ranker, False,
            blend=blend,
        )  # fmt: skip
        lists, positives = evaluation.ranked["ranker"], evaluation.positives
        return ranking_metrics_at(recommended=lists, positives=positives, k=10, n_active_items=n_active)["ndcg@10"]

    assert result.metrics["ndcg@10"] == pytest.approx(ndcg(trained.blend), abs=1e-9)
    assert result.metrics["ndcg@10"] != pytest.approx(ndcg(ranking.RANKER_ALONE), abs=1e-6)


def test_a_timeline_with_enough_queries_in_its_latest_window_keeps_the_default_settings(learnable_log):
    params = replace(PARAMS, min_ranker_groups=50)
    selection, windows, _ = _selection(learnable_log, params=params)
    assert selection.chosen is None and selection.params == params
    assert (windows.windows == 0).all()


@pytest.mark.slow
def test_a_refit_trains_the_gated_setting_again_without_choosing(learnable_log):
    gated = model_train(output_dir=None, log=learnable_log, progress=None, params=PARAMS)
    chosen = gated.manifest["params"]["ranker_selection"]["chosen"]
    refit = model_refit(gated=gated, until=None, output_dir=None, progress=None, log=learnable_log)
    assert refit.manifest["params"]["ranker_selection"]["chosen"] is None
    expected = _fixed(chosen)
    assert refit.manifest["params"]["training"]["label_windows"] == expected.label_windows
    assert refit.manifest["params"]["ranker"]["lambda_l2"] == expected.ranker_lambda_l2
    weight = gated.manifest["params"]["ranker_selection"]["popularity_weight"]
    assert refit.manifest["params"]["training"]["ranker_popularity_weight"] == weight
    assert (refit.manifest["params"]["ranker_blend"]["prior_coefficient"] > 0.0) == (weight > 0.0)
