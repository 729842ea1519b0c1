import numpy as np

from retraining.ml.params import TrainingParams
from retraining.ml.split import holdout_split, split_compute
from tests.retraining.factories import START, RawDataset, RawEvent, event_log_from, learnable_dataset


def _log(per_user_counts, ties=False):
    events = [
        RawEvent(user, user, "view", None, START + (0 if ties else i))
        for user, count in enumerate(per_user_counts)
        for i in range(count)
    ]
    return event_log_from(RawDataset(len(per_user_counts), [()] * len(per_user_counts), events))


def _split(log):
    return holdout_split(user=log.user, ts=log.ts, mask=np.ones(len(log), bool), n_users=len(log.user_pks))


def test_users_with_fewer_than_five_events_keep_all_of_them_for_training():
    log = _log([4, 5])
    split = _split(log)
    assert not split.holdout[log.user == 0].any()
    assert np.isnan(split.cutoff[0])
    assert split.holdout[log.user == 1].sum() == 1


def test_the_last_fifth_of_each_users_events_is_held_out():
    log = _log([10, 12, 7])
    split = _split(log)
    assert [int(split.holdout[log.user == u].sum()) for u in range(3)] == [2, 2, 1]
    for u in range(3):
        times = log.ts[log.user == u]
        held = split.holdout[log.user == u]
        assert times[~held].max() < times[held].min()
        assert split.cutoff[u] == times[held].min()


def test_events_at_the_same_time_are_ordered_by_id():
    log = _log([10], ties=True)
    split = _split(log)
    assert log.event_pk[split.holdout].tolist() == [9, 10]


def test_the_label_window_is_taken_from_the_training_portion_only():
    log = event_log_from(learnable_dataset(users=30, per_user=20))
    split = split_compute(log, TrainingParams())
    assert not (split.label & split.holdout).any()
    assert not (split.fit & split.label).any()
    assert ((split.fit | split.label) == split.train).all()
    assert (split.train ^ split.holdout).all()


def test_a_split_without_holdout_trains_on_every_event_and_still_takes_label_windows():
    log = event_log_from(learnable_dataset(users=30, per_user=20))
    split = split_compute(log, TrainingParams(), holdout=False)
    assert split.train.all() and not split.holdout.any() and np.isnan(split.cutoff).all()
    assert split.label.any() and ((split.fit | split.label) == split.train).all()
