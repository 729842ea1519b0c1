"""The evaluation's cost grows with the events, not faster (issue 16): the same users twice over cost twice the
reads. A count of the cells the code reads from the event log's arrays and EASE's weights, not a timing: a
per-user step that read every user's events, or a gather quadratic in the whole holdout, would read four times
as much or more for twice the users."""

from dataclasses import replace

import numpy as np

from retraining.ml.candidates import collaborative_fit
from retraining.ml.metrics import candidate_recall
from retraining.ml.params import TrainingParams
from retraining.ml.regressor import RatingContext, weights_gather
from retraining.ml.replay import evaluation_run
from retraining.ml.split import split_compute
from tests.retraining.factories import RawDataset, event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)
LOG_ARRAYS = ("event_pk", "user", "item", "event_type", "value", "ts")


class CountedReads(np.ndarray):
    """An array that adds the size of every indexing result to its counter, shared with the arrays derived from it."""

    def __array_finalize__(self, source):
        self.counter = getattr(source, "counter", None)

    def __getitem__(self, key):
        result = super().__getitem__(key)
        if self.counter is not None and isinstance(result, np.ndarray):
            self.counter[0] += result.size
        return result


def _counted(array: np.ndarray, counter: list[int]) -> CountedReads:
    counted = array.view(CountedReads)
    counted.counter = counter
    return counted


def _twice(dataset: RawDataset) -> RawDataset:
    """The same users again under new codes: the same histories, times and items."""
    copies = [replace(event, user=event.user + dataset.n_users) for event in dataset.events]
    return replace(dataset, n_users=2 * dataset.n_users, events=dataset.events + copies)


def _evaluation_reads(dataset: RawDataset, weights: np.ndarray) -> tuple[int, dict]:
    """Cells read by the evaluation replay and the rating model's neighbour features of the held-out ratings,
    with `weights` (from the single dataset, so that both sizes rank with the same model), and the candidate
    recall of the replay's pools."""
    log = event_log_from(dataset)
    split = split_compute(log, PARAMS)
    counter = [0]
    for name in LOG_ARRAYS:
        setattr(log, name, _counted(getattr(log, name), counter))
    model = collaborative_fit(log=log, mask=split.train, n_modelled=PARAMS.ease_items, l2=PARAMS.ease_l2)
    model.weights = _counted(weights, counter)
    counter[0] = 0
    evaluation = evaluation_run(log, split, PARAMS, log.category_share(), model, None, True)
    context = RatingContext.fit(log, split.train, 5.0, model)
    context.columns(evaluation.regressor_holdout, evaluation.regressor_holdout_events)
    return counter[0], candidate_recall(pools=evaluation.pools, positives=evaluation.positives)


def test_the_same_users_twice_over_cost_the_evaluation_twice_the_reads():
    dataset = learnable_dataset(users=80, items=60, per_user=40, seed=3)
    log = event_log_from(dataset)
    split = split_compute(log, PARAMS)
    weights = collaborative_fit(log=log, mask=split.train, n_modelled=PARAMS.ease_items, l2=PARAMS.ease_l2).weights

    once, recall_once = _evaluation_reads(dataset, weights)
    twice, recall_twice = _evaluation_reads(_twice(dataset), weights)

    assert once > 0
    assert recall_twice == recall_once  # the same users ranked the same way: the cost compares like with like
    assert twice <= 2.05 * once, f"{twice} cells read for twice the users against {once}"


def test_whole_rows_and_cell_by_cell_gathers_give_the_same_weights():
    weights = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
    rows = np.array([5, 299, 0, 5, 17])
    for columns in (np.array([3, 1, 3]), np.arange(299, -1, -7)):
        gathered = weights_gather(weights, rows, columns)
        assert gathered.dtype == np.float64
        np.testing.assert_array_equal(gathered, weights[np.ix_(rows, columns)].astype(np.float64))
