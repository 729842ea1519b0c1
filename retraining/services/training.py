"""A training run: read the events, run the ML steps of retraining.ml in order, and write the model
directory. The steps themselves (splits, candidates, ranker, rating model, evaluation replay, metrics,
manifest) live in retraining.ml, which imports no Django."""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from recommendations import ranking
from retraining.ml import profiling
from retraining.ml.candidates import collaborative_fit
from retraining.ml.events import EventLog
from retraining.ml.manifest import Manifest, dataset_statistics, training_window
from retraining.ml.metrics import CF_NAME, ranking_metrics_at
from retraining.ml.params import TrainingParams
from retraining.ml.regressor import rating_bounds, rating_scores
from retraining.ml.replay import Evaluation, evaluation_run
from retraining.ml.split import Split, split_compute
from retraining.ml.steps import LocalSteps
from retraining.services import artifacts
from retraining.services.dataset import event_log_load


@dataclass
class TrainingResult:
    metrics: dict
    baselines: dict
    dataset: dict
    timings_s: dict
    peak_memory_mb: float
    stage_peak_memory_mb: dict
    output_dir: Path | None
    manifest: dict

    def summary(self) -> dict:
        """The `train --json` contract."""
        return {
            "metrics": self.metrics,
            "baselines": self.baselines,
            "dataset": self.dataset,
            "timings_s": self.timings_s,
            "peak_memory_mb": self.peak_memory_mb,
            "stage_peak_memory_mb": self.stage_peak_memory_mb,
            "output_dir": str(self.output_dir) if self.output_dir else None,
        }


def training_run_execute(
    *,
    until: datetime | None = None,
    output_dir: Path | None,
    params: TrainingParams = TrainingParams(),
    progress: TextIO | None = sys.stderr,
    log: EventLog | None = None,
    refit_of: TrainingResult | None = None,
    cluster: str | None = None,
) -> TrainingResult:
    """Build the dataset, train the ranker and the rating model, evaluate them and both baselines on the
    holdout, and write the model directory to `output_dir` (nothing is written if it is None). `progress`
    receives each stage's start and end.

    With `refit_of` (a gated result) nothing is held out, and the metrics are the gated model's on its
    holdout: a model trained on the holdout cannot be scored on it.

    With `cluster` (a Dask scheduler's address, e.g. tcp://host:8786) the ranker's examples, both fits and the
    evaluation replay run on that cluster (retraining.ml.distributed); the candidate model is fitted here."""
    holdout = refit_of is None
    stages = profiling.Stages()
    with _stage_lines_to(progress):
        with stages.stage("load_events"):
            log = log if log is not None else event_log_load(until=until)
            split = split_compute(log, params, holdout=holdout)
            category_share = log.category_share()
        if not split.label.any() or (holdout and not split.holdout.any()):
            raise ValueError("too few events to train: no user has enough events for a holdout")
        with training_steps(log, split, cluster) as steps:
            ranker, regressor, model, examples, evaluation = _models_train(stages, steps, log, split, params)
        with stages.stage("metrics"):
            metrics, baselines = (
                _scores(evaluation, log, params, regressor) if holdout else (refit_of.metrics, refit_of.baselines)
            )
        dataset = dataset_statistics(log, split)
        manifest = Manifest(
            params=params, ranker=ranker, regressor=regressor, collaborative=model, refit=not holdout,
            training_window=training_window(log, split), dataset=dataset,
            ranker_examples=int(len(examples.labels)), ranker_groups=int(len(examples.groups)),
            category_share=category_share,
            reference_distributions={
                "ranker": artifacts.reference_distributions(examples.matrix, ranking.RANKER_FEATURES),
            },
            metrics=metrics, baselines=baselines, timings_s=stages.timings_s,
        ).as_dict()
        if output_dir is not None:
            with stages.stage("artifacts"):
                artifacts.model_directory_write(
                    directory=Path(output_dir), ranker=ranker, regressor=regressor, collaborative=model,
                    item_external_ids=log.item_external_ids, manifest=manifest,
                )
    return TrainingResult(
        metrics=metrics, baselines=baselines, dataset=dataset, timings_s=dict(stages.timings_s),
        peak_memory_mb=round(profiling.peak_memory_mb(), 1), stage_peak_memory_mb=dict(stages.peak_memory_mb),
        output_dir=Path(output_dir) if output_dir is not None else None, manifest=manifest,
    )


@contextmanager
def training_steps(log: EventLog, split: Split, cluster: str | None):
    """The steps that grow with events (retraining.ml.steps) for this log and split: in this process, or on the
    Dask cluster at `cluster`, connected for the block."""
    if cluster is None:
        yield LocalSteps(log, split)
        return
    from retraining.ml import distributed  # Dask is imported only when a cluster is configured

    with distributed.cluster_connect(cluster) as connected:
        profiling.logger.info("[train] on the Dask cluster at %s: %d workers", cluster, len(connected.workers))
        yield distributed.ClusterSteps(connected, log, split)


def _models_train(stages: profiling.Stages, steps, log: EventLog, split: Split, params: TrainingParams):
    """The ranker (on examples from the label windows), the collaborative model on the training portion, the
    evaluation replay and the rating model, each a stage."""
    category_share = log.category_share()
    with stages.stage("candidates_label_window"):
        inner_model = collaborative_fit(log=log, mask=split.fit, n_modelled=params.ease_items, l2=params.ease_l2)
    with stages.stage("ranker_examples"):
        examples = steps.ranker_examples(params, category_share, inner_model)
        del inner_model
    if not len(examples.groups):
        raise ValueError("too few events to train: no label window has a positive event among its candidates")
    with stages.stage("ranker_fit"):
        ranker = steps.ranker_fit(examples, params)
    with stages.stage("candidates_training_portion"):
        model = collaborative_fit(log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2)
    with stages.stage("evaluation_replay"):
        evaluation = steps.evaluation(params, category_share, model, ranker, with_regressor=True)
    with stages.stage("regressor_fit"):
        regressor = None
        if len(evaluation.regressor_train_target) >= 2 * params.min_data_in_leaf:
            regressor = steps.regressor_fit(evaluation.regressor_train, evaluation.regressor_train_target, params)
    return ranker, regressor, model, examples, evaluation


def training_run_refit(*, gated: TrainingResult, until: datetime | None, output_dir: Path | None,
                       progress: TextIO | None = sys.stderr, cluster: str | None = None) -> TrainingResult:
    """The gated model's configuration trained again on every event up to `until`, holdout included."""
    params = TrainingParams(**gated.manifest["params"]["training"])
    return training_run_execute(until=until, output_dir=output_dir, params=params, progress=progress, refit_of=gated,
                                cluster=cluster)


def baselines_evaluate(
    *, until: datetime | None = None, params: TrainingParams = TrainingParams(), progress: TextIO | None = sys.stderr,
    log: EventLog | None = None,
) -> dict:
    """Most-popular and EASE alone, on the same split and protocol as training_run_execute."""
    stages = profiling.Stages()
    with _stage_lines_to(progress):
        with stages.stage("load_events"):
            log = log if log is not None else event_log_load(until=until)
            split = split_compute(log, params)
        with stages.stage("candidates_training_portion"):
            model = collaborative_fit(log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2)
        with stages.stage("evaluation"):
            evaluation = evaluation_run(log, split, params, {}, model, None, with_regressor=False)
            baselines = {name: _ranked_metrics(evaluation, log, params, name) for name in evaluation.ranked}
    return {"baselines": baselines, "dataset": dataset_statistics(log, split), "timings_s": stages.timings_s}


def _ranked_metrics(evaluation: Evaluation, log: EventLog, params: TrainingParams, name: str) -> dict:
    return ranking_metrics_at(recommended=evaluation.ranked[name], positives=evaluation.positives, k=params.k,
                              n_active_items=int(log.item_active.sum()))


def _scores(evaluation: Evaluation, log: EventLog, params: TrainingParams, regressor) -> tuple[dict, dict]:
    metrics = _ranked_metrics(evaluation, log, params, "ranker")
    metrics.update(rating_scores(regressor, matrix=evaluation.regressor_holdout,
                                 actual=evaluation.regressor_holdout_target,
                                 bounds=rating_bounds(log.value[log.is_rating()])))
    return metrics, {name: _ranked_metrics(evaluation, log, params, name) for name in ("popularity", CF_NAME)}


@contextmanager
def _stage_lines_to(stream: TextIO | None):
    """Send the stage lines this thread logs (retraining.ml.profiling) to `stream` instead of the configured
    handlers, so that each is written once: a training run's log receives them, or a command's stderr.
    Without a stream they go wherever logging is configured to send INFO records."""
    if stream is None:
        yield
        return
    thread = threading.get_ident()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: record.thread == thread)
    source = profiling.logger
    level, propagate = source.level, source.propagate
    source.addHandler(handler)
    source.setLevel(logging.INFO)
    source.propagate = False
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level)
        source.propagate = propagate
