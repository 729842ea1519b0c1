import logging
from io import StringIO

from retraining.ml import profiling
from retraining.ml.params import TrainingParams
from retraining.services.training import model_train
from tests.retraining.factories import event_log_from, learnable_dataset

PARAMS = TrainingParams(num_threads=1)


def test_each_stage_start_and_end_reaches_the_progress_stream_once_and_nothing_stays_attached(caplog):
    stream = StringIO()
    result = model_train(output_dir=None, log=event_log_from(learnable_dataset()), progress=stream, params=PARAMS)
    lines = stream.getvalue().splitlines()
    for stage in result.timings_s:
        assert f"[train] {stage} ..." in lines
        assert any(line.startswith(f"[train] {stage} done in ") and line.endswith(" MB)") for line in lines)
    assert not [record for record in caplog.records if record.name == profiling.logger.name]  # not twice
    assert profiling.logger.handlers == [] and profiling.logger.level == logging.NOTSET and profiling.logger.propagate
