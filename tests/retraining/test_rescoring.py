from datetime import UTC, datetime

import numpy as np
import pytest

from recommendations import ranking
from retraining.ml.params import TrainingParams
from retraining.ml.split import holdout_after, split_compute
from retraining.services.rescoring import models_score_on_holdout
from retraining.services.training import model_train
from tests.retraining.factories import DAY, START, RawDataset, RawEvent, event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)


def _moment(days: float) -> datetime:
    return datetime.fromtimestamp(START + days * DAY, tz=UTC)


def test_the_comparison_holdout_keeps_the_held_out_events_after_the_cut_off_and_makes_earlier_ones_history():
    # Ten events each, one a day; the last two are held out: days 8-9, 3-4 and 13-14.
    offsets = [0, -5, 5]
    log = event_log_from(
        RawDataset(
            3,
            [()] * 30,
            [
                RawEvent(user, user * 10 + i, "view", None, START + (offset + i) * DAY)
                for user, offset in enumerate(offsets)
                for i in range(10)
            ],
        )
    )
    split = split_compute(log, PARAMS)
    restricted = holdout_after(split, log, moment=_moment(8.5))
    assert set(log.ts[restricted.holdout].tolist()) == {START + d * DAY for d in (9, 13, 14)}
    assert (log.ts[restricted.holdout] > _moment(8.5).timestamp()).all()
    earlier = split.holdout & ~restricted.holdout
    assert earlier.sum() == 3 and restricted.train[earlier].all()  # known history at the comparison's start
    np.testing.assert_array_equal(restricted.cutoff, [START + 9 * DAY, np.nan, START + 13 * DAY])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    log = event_log_from(learnable_dataset())
    directory = tmp_path_factory.mktemp("model")
    result = model_train(output_dir=directory, log=log, progress=None, params=PARAMS)
    return log, result, ranking.trained_model_load(directory)


def test_a_model_re_scored_on_its_whole_holdout_gets_the_numbers_its_training_recorded(trained):
    log, result, model = trained
    scores = models_score_on_holdout(until=None, params=PARAMS, models={"model": model}, log=log)
    assert scores.models["model"].metrics == pytest.approx(result.metrics)
    assert scores.models["model"].popularity == pytest.approx(result.baselines["popularity"])
    assert scores.models["model"].ease == pytest.approx(result.baselines["ease"])
    assert scores.events == result.dataset["holdout_events"] and scores.after is None


def test_models_scored_after_a_cut_off_are_scored_on_the_same_fewer_users_and_only_the_later_events(trained):
    log, _result, model = trained
    after = _moment(110)
    scores = models_score_on_holdout(until=None, params=PARAMS, models={"a": model, "b": model}, log=log, after=after)
    split = split_compute(log, PARAMS)
    assert scores.events == (split.holdout & (log.ts > after.timestamp())).sum()
    assert 0 < scores.events < split.holdout.sum()
    whole = models_score_on_holdout(until=None, params=PARAMS, models={"a": model}, log=log)
    assert 0 < scores.users < whole.users
    assert len(scores.models["a"].user_ndcg) == len(scores.models["b"].user_ndcg) == scores.users
    np.testing.assert_array_equal(scores.models["a"].user_ndcg, scores.models["b"].user_ndcg)
