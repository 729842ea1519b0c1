"""The training steps whose work grows with events and users, behind one interface: in this process
(LocalSteps) or on a Dask cluster (retraining.ml.distributed.ClusterSteps). The orchestration
(retraining.services.training) runs the same sequence with either."""

from __future__ import annotations

import lightgbm as lgb

from recommendations import ranking
from retraining.ml.events import EventLog
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import RankerExamples, ranker_examples_windows, ranker_fit
from retraining.ml.regressor import RatingModel, rating_model_fit
from retraining.ml.replay import Evaluation, evaluation_run
from retraining.ml.split import Split


class LocalSteps:
    def __init__(self, log: EventLog, split: Split):
        self.log, self.split = log, split

    def ranker_examples(
        self, params: TrainingParams, category_share: dict, model: ranking.CollaborativeModel
    ) -> RankerExamples:
        return ranker_examples_windows(self.log, self.split, params, category_share, model)

    def ranker_fit(self, examples: RankerExamples, params: TrainingParams) -> lgb.Booster:
        return ranker_fit(examples, params)

    def evaluation(
        self,
        params: TrainingParams,
        category_share: dict,
        model: ranking.CollaborativeModel,
        ranker: lgb.Booster | None,
        *,
        with_regressor: bool,
        blend: ranking.RankerBlend = ranking.RANKER_ALONE,
    ) -> Evaluation:
        return evaluation_run(self.log, self.split, params, category_share, model, ranker, with_regressor, blend=blend)

    def rating_model_fit(
        self, evaluation: Evaluation, params: TrainingParams, inner_model: ranking.CollaborativeModel
    ) -> RatingModel:
        return rating_model_fit(self.log, self.split, evaluation, params, inner_model)
