"""A training run: read the events, run the ML steps of retraining.ml in order, and write the model
directory. The steps themselves (splits, candidates, ranker, rating model, evaluation replay, metrics,
manifest) live in retraining.ml, which imports no Django."""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TextIO

from recommendations import ranking
from retraining.ml import profiling, tuning
from retraining.ml.candidates import collaborative_and_item_knn_fit, collaborative_fit, item_knn_lists
from retraining.ml.events import EventLog
from retraining.ml.manifest import Manifest, dataset_statistics, training_window
from retraining.ml.metrics import CF_NAME, KNN_NAME, candidate_recall, ranking_metrics_at
from retraining.ml.params import TrainingParams
from retraining.ml.ranker import ranker_blend_fit
from retraining.ml.regressor import RatingModel, rating_baselines, rating_bounds, rating_scores
from retraining.ml.replay import Evaluation, evaluation_run
from retraining.ml.segments import segment_names, segments_table, user_history_counts
from retraining.ml.split import Split, histories_by_user, split_compute
from retraining.ml.steps import LocalSteps
from retraining.ml.tuning import ranker_setting_select
from retraining.services import model_directory
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
    segments: dict = field(default_factory=dict)  # retraining.ml.segments.segments_table of the holdout
    stage_cpu_s: dict = field(default_factory=dict)  # this process's CPU seconds per stage (profiling.Stages)

    def summary(self) -> dict:
        """The `train --json` contract."""
        return {
            "metrics": self.metrics,
            "baselines": self.baselines,
            "segments": self.segments,
            "dataset": self.dataset,
            "timings_s": self.timings_s,
            "peak_memory_mb": self.peak_memory_mb,
            "stage_peak_memory_mb": self.stage_peak_memory_mb,
            "stage_cpu_s": self.stage_cpu_s,
            "output_dir": str(self.output_dir) if self.output_dir else None,
        }


def model_train(
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
    evaluation replay run on that cluster (retraining.ml.distributed); the collaborative models and the rating
    model's biases are fitted here."""
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
            ranker, blend, rating_model, model, examples, evaluation, selection = _models_train(
                stages, steps, log, split, params, item_knn=holdout
            )
        with stages.stage("metrics"):
            metrics, baselines = (
                _scores(evaluation, log, split, params, rating_model, model)
                if holdout
                else (refit_of.metrics, refit_of.baselines)
            )
            segments = _segments(evaluation, log, split, params) if holdout else refit_of.segments
        dataset = dataset_statistics(log, split)
        manifest = Manifest(
            params=params,
            ranker=ranker,
            ranker_blend=blend,
            regressor=rating_model.booster,
            collaborative=model,
            refit=not holdout,
            rating_model=rating_model.manifest(),
            ranker_selection=selection.manifest(),
            training_window=training_window(log, split),
            dataset=dataset,
            ranker_examples=len(examples.labels),
            ranker_groups=len(examples.groups),
            category_share=category_share,
            reference_distributions={
                "ranker": model_directory.reference_distributions(examples.matrix, ranking.RANKER_FEATURES),
            },
            metrics=metrics,
            baselines=baselines,
            timings_s=stages.timings_s,
        ).as_dict()
        if output_dir is not None:
            with stages.stage("artifacts"):
                model_directory.model_directory_write(
                    directory=Path(output_dir),
                    ranker=ranker,
                    regressor=rating_model.booster,
                    collaborative=model,
                    item_external_ids=log.item_external_ids,
                    manifest=manifest,
                )
    return TrainingResult(
        metrics=metrics,
        baselines=baselines,
        dataset=dataset,
        timings_s=dict(stages.timings_s),
        peak_memory_mb=round(profiling.peak_memory_mb(), 1),
        stage_peak_memory_mb=dict(stages.peak_memory_mb),
        output_dir=Path(output_dir) if output_dir is not None else None,
        manifest=manifest,
        segments=segments,
        stage_cpu_s=dict(stages.cpu_s),
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


def _models_train(
    stages: profiling.Stages, steps, log: EventLog, split: Split, params: TrainingParams, *, item_knn: bool
):
    """The ranker (on examples from the label windows), the collaborative model on the training portion, the
    evaluation replay (with the item-kNN baseline's lists if `item_knn`, from the gathered users) and the rating
    model, each a stage."""
    category_share = log.category_share()
    with stages.stage("candidates_label_window"):  # also the rating model's neighbourhood
        inner_model = collaborative_fit(log=log, mask=split.fit, n_modelled=params.ease_items, l2=params.ease_l2)
    with stages.stage("ranker_examples"):
        windows = steps.ranker_examples(params, category_share, inner_model)
    if not len(windows.groups):
        raise ValueError("too few events to train: no label window has a positive event among its candidates")
    with stages.stage("ranker_selection"):
        selection = ranker_setting_select(windows, log=log, split=split, params=params, fit=steps.ranker_fit)
    examples = windows.windows_take(first=0, params=selection.params)
    with stages.stage("ranker_fit"):
        ranker = steps.ranker_fit(examples, selection.params)
        blend = ranker_blend_fit(ranker, examples, selection.params.ranker_popularity_weight)
    with stages.stage("candidates_training_portion"):
        model, knn = _training_portion_fit(log, split, params, item_knn=item_knn)
    with stages.stage("evaluation_replay"):
        evaluation = steps.evaluation(params, category_share, model, ranker, with_regressor=True, blend=blend)
        if item_knn:
            _item_knn_add(evaluation, log, split, knn, params)
    with stages.stage("regressor_fit"):
        rating_model = steps.rating_model_fit(evaluation, params, inner_model)
    return ranker, blend, rating_model, model, examples, evaluation, selection


def model_refit(
    *,
    gated: TrainingResult,
    until: datetime | None,
    output_dir: Path | None,
    progress: TextIO | None = sys.stderr,
    cluster: str | None = None,
    log: EventLog | None = None,
) -> TrainingResult:
    """The gated model's configuration trained again on every event up to `until`, holdout included: the same
    ranker setting as the gated model chose (retraining.ml.tuning), not chosen again."""
    params = TrainingParams(**gated.manifest["params"]["training"])
    selection = gated.manifest["params"].get("ranker_selection", {})
    if selection.get("chosen") is not None:
        params = replace(
            params,
            **tuning.RANKER_SETTINGS[selection["chosen"]],
            ranker_popularity_weight=float(selection.get("popularity_weight", 0.0)),
            ranker_selection=False,
        )
    return model_train(
        until=until, output_dir=output_dir, params=params, progress=progress, refit_of=gated, cluster=cluster, log=log
    )


def baselines_evaluate(
    *,
    until: datetime | None = None,
    params: TrainingParams = TrainingParams(),
    progress: TextIO | None = sys.stderr,
    log: EventLog | None = None,
) -> dict:
    """Most-popular and EASE alone, on the same split and protocol as model_train."""
    stages = profiling.Stages()
    with _stage_lines_to(progress):
        with stages.stage("load_events"):
            log = log if log is not None else event_log_load(until=until)
            split = split_compute(log, params)
        with stages.stage("candidates_training_portion"):
            model, knn = _training_portion_fit(log, split, params, item_knn=True)
        with stages.stage("evaluation"):
            evaluation = evaluation_run(log, split, params, {}, model, None, with_regressor=False)
            _item_knn_add(evaluation, log, split, knn, params)
            baselines = {name: _ranked_metrics(evaluation, log, params, name) for name in evaluation.ranked}
    return {
        "baselines": baselines,
        "candidates": _candidate_recall(evaluation),
        "dataset": dataset_statistics(log, split),
        "timings_s": stages.timings_s,
    }


def _training_portion_fit(log: EventLog, split: Split, params: TrainingParams, *, item_knn: bool):
    """EASE on the training portion, and the item-kNN baseline's model (None unless `item_knn`) from the same X'X."""
    if not item_knn:
        return collaborative_fit(log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2), None
    return collaborative_and_item_knn_fit(log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2)


def _item_knn_add(
    evaluation: Evaluation, log: EventLog, split: Split, knn: ranking.CollaborativeModel, params: TrainingParams
) -> None:
    """The item-kNN baseline's lists for the evaluated users, fitted on the training portion as EASE is."""
    evaluation.ranked[KNN_NAME] = item_knn_lists(
        knn=knn, histories=histories_by_user(log, split.train), users=evaluation.users, k=params.k
    )


def _candidate_recall(evaluation: Evaluation) -> dict:
    return candidate_recall(pools=evaluation.pools, positives=evaluation.positives)


def _ranked_metrics(evaluation: Evaluation, log: EventLog, params: TrainingParams, name: str) -> dict:
    return ranking_metrics_at(
        recommended=evaluation.ranked[name],
        positives=evaluation.positives,
        k=params.k,
        n_active_items=int(log.item_active.sum()),
    )


def _scores(
    evaluation: Evaluation,
    log: EventLog,
    split: Split,
    params: TrainingParams,
    rating_model: RatingModel,
    collaborative: ranking.CollaborativeModel,
) -> tuple[dict, dict]:
    """The model's metrics; the ranking baselines' and the rating baselines' on the same held-out events."""
    metrics = _ranked_metrics(evaluation, log, params, "ranker") | _candidate_recall(evaluation)
    bounds = rating_bounds(log.value[log.is_rating()])
    metrics.update(
        rating_scores(
            rating_model, log=log, split=split, evaluation=evaluation, collaborative=collaborative, bounds=bounds
        )
    )
    baselines = {name: _ranked_metrics(evaluation, log, params, name) for name in ("popularity", CF_NAME, KNN_NAME)}
    return metrics, baselines | rating_baselines(log, split, evaluation, bias_l2=rating_model.bias_l2, bounds=bounds)


def _segments(evaluation: Evaluation, log: EventLog, split: Split, params: TrainingParams) -> dict:
    counts = user_history_counts(log, split, users=evaluation.users)
    return segments_table(
        lists=evaluation.ranked, positives=evaluation.positives, segments=segment_names(counts), k=params.k
    )


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
