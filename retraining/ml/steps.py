"""The training steps whose work grows with events and users, behind one interface: in this process
(LocalSteps) or on a Dask cluster (retraining.ml.distributed.ClusterSteps). The orchestration
(retraining.services.training) runs the same sequence with either."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.events import EventLog
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import RankerExamples, ranker_examples_build, ranker_fit
from retraining.ml.regressor import regressor_fit
from retraining.ml.replay import Evaluation, evaluation_run
from retraining.ml.split import Split


class LocalSteps:
    def __init__(self, log: EventLog, split: Split):
        self.log, self.split = log, split

    def ranker_examples(self, params: TrainingParams, category_share: dict,
                        model: ranking.CollaborativeModel) -> RankerExamples:
        return ranker_examples_build(self.log, self.split, params, category_share, model)

    def ranker_fit(self, examples: RankerExamples, params: TrainingParams) -> lgb.Booster:
        return ranker_fit(examples, params)

    def evaluation(self, params: TrainingParams, category_share: dict, model: ranking.CollaborativeModel,
                   ranker: lgb.Booster | None, *, with_regressor: bool) -> Evaluation:
        return evaluation_run(self.log, self.split, params, category_share, model, ranker, with_regressor)

    def regressor_fit(self, matrix: np.ndarray, target: np.ndarray, params: TrainingParams) -> lgb.Booster:
        return regressor_fit(matrix, target, params)
