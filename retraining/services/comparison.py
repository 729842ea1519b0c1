"""Two versions compared on one holdout: both re-scored, with the baselines, by the replay the gate uses
(retraining.services.rescoring.models_score_on_holdout) in one call, so that every row is computed on the same
held-out events and the same users, and the comparison records which events those are.

Which held-out events (comparison_holdout): the later version's holdout (by training cut-off) restricted to the
events after the earlier version's cut-off, the rule the gate applies to a candidate and its champion. The later
version never trained on its own holdout and the earlier one never saw anything after its cut-off, so neither
has seen these events. Two exceptions, each explained in the record:
- the later version was refit on all its data (it trained on its holdout too): the holdout of every event so
  far, restricted to the events after the later version's cut-off (those may be few or none yet);
- no event arrived between the two cut-offs and the earlier one was not refit: both trained on the training
  portion of the same split, so its whole holdout is compared (neither trained on any of it).
The baselines (most-popular, EASE, and the rating baselines) are those of the later version's replay, as in the
gate: fitted on the same training portion, ranked for the same users."""

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from recommendations.serving.loading import trained_model_of
from recsite.errors import ApplicationError
from registry.artifacts import ArtifactError, artifact_present_check
from registry.models import ModelVersion
from registry.services import model_version_get
from retraining.ml.manifest import json_safe
from retraining.ml.metrics import CF_NAME, RATING_BASELINES
from retraining.ml.params import TrainingParams
from retraining.models import ComparisonStatus, VersionComparison
from retraining.services.dataset import event_log_load
from retraining.services.pipeline import training_cluster
from retraining.services.rescoring import HoldoutScores, models_score_on_holdout
from retraining.services.runs import TRAINING_QUEUE, BrokerUnavailable

COMPARISON_TASK = "retraining.version_comparison_compute"
IN_PROGRESS = (ComparisonStatus.QUEUED, ComparisonStatus.RUNNING)
RANKING_KEYS = [
    "ndcg@10",
    "recall@10",
    "precision@10",
    "map@10",
    "hit_rate@10",
    "coverage@10",
    "candidate_recall@100",
]
RATING_KEYS = ["rmse", "mae", "r2"]
BASELINE_LABELS = {
    "popularity": "most-popular",
    CF_NAME: "EASE",
    "bias": "user + item biases",
    "global_mean": "global mean",
}


@dataclass(frozen=True)
class ComparisonHoldout:
    until: datetime | None  # the split is of the events up to then (None: every event so far)
    after: datetime | None  # only held-out events strictly after this are scored (None: the whole holdout)
    basis: str  # why these events, as a sentence


def version_comparison_request(*, versions: list[int], requested_by: str) -> tuple[VersionComparison, bool]:
    """A comparison of two versions, queued for the trainer once committed; a comparison of the same two (in
    the same order) still queued or running is returned instead of a second one. Returns it and whether it is
    new. Raises 400 for the same version twice, 404 for an unknown one, 422 for a version without its
    artifact, 503 (the comparison then failed) if the broker cannot take the task."""
    first, second = versions
    if first == second:
        raise ApplicationError(
            f"Compare two different versions (v{first} was given twice).",
            extra={"errors": [{"index": None, "field": "versions", "message": "The two versions are the same."}]},
        )
    a, b = model_version_get(version=first), model_version_get(version=second)
    for version in (a, b):
        try:
            artifact_present_check(path=version.artifact_path, sha256=version.artifact_sha256)
        except ArtifactError as exc:
            raise ArtifactError(
                f"{version} cannot be compared: {exc.message}", extra={"version": version.version}
            ) from exc
    pending = VersionComparison.objects.filter(version_a=a, version_b=b, status__in=IN_PROGRESS).first()
    if pending is not None:
        return pending, False
    with transaction.atomic():
        comparison = VersionComparison.objects.create(version_a=a, version_b=b, requested_by=requested_by)
        transaction.on_commit(lambda: version_comparison_enqueue(comparison_id=comparison.pk))
    return comparison, True


def version_comparison_enqueue(*, comparison_id: int) -> None:
    """Send a committed comparison to the trainer (the `training` queue: it replays like a training run's gate)."""
    try:
        current_app.send_task(COMPARISON_TASK, args=[comparison_id], queue=TRAINING_QUEUE)
    except BrokerError as exc:
        VersionComparison.objects.filter(pk=comparison_id, status=ComparisonStatus.QUEUED).update(
            status=ComparisonStatus.FAILED,
            finished_at=timezone.now(),
            error=f"not started: the broker is unavailable ({exc})",
        )
        raise BrokerUnavailable(
            "The task broker is unavailable, so the comparison could not be started; retry later.",
            extra={"comparison_id": comparison_id},
        ) from exc


def version_comparison_claim(*, comparison_id: int) -> bool:
    """Queued → running, or a running one whose task has outlived the training time limit (its worker died and
    the message came back). False otherwise: a duplicate or redelivered task does nothing."""
    now = timezone.now()
    abandoned = Q(status=ComparisonStatus.RUNNING, started_at__lt=now - timedelta(seconds=settings.TRAINING_TIME_LIMIT))
    claimable = Q(status=ComparisonStatus.QUEUED) | abandoned
    return (
        VersionComparison.objects.filter(claimable, pk=comparison_id).update(
            status=ComparisonStatus.RUNNING, started_at=now
        )
        == 1
    )


def version_comparison_compute(*, comparison_id: int) -> None:
    """Score both versions and the baselines on one holdout and record the rows. Idempotent: only a claimed
    comparison is computed, and its result is written only while it is still running. A version whose artifact
    fails to load, or a holdout with nothing to compare on, fails the comparison with the reason."""
    if not version_comparison_claim(comparison_id=comparison_id):
        return
    comparison = VersionComparison.objects.select_related("version_a", "version_b").get(pk=comparison_id)
    try:
        result = version_comparison_scores(a=comparison.version_a, b=comparison.version_b)
    except ApplicationError as exc:
        _comparison_finish(comparison_id, status=ComparisonStatus.FAILED, error=exc.message)
        return
    except Exception as exc:
        _comparison_finish(comparison_id, status=ComparisonStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    _comparison_finish(comparison_id, status=ComparisonStatus.DONE, **result)


def version_comparison_fail(*, comparison_id: int, error: str) -> None:
    _comparison_finish(comparison_id, status=ComparisonStatus.FAILED, error=error)


def _comparison_finish(comparison_id: int, *, status: str, **fields) -> None:
    VersionComparison.objects.filter(pk=comparison_id, status=ComparisonStatus.RUNNING).update(
        status=status, finished_at=timezone.now(), **fields
    )


def comparison_holdout(*, earlier: ModelVersion, later: ModelVersion, log_times: np.ndarray) -> ComparisonHoldout:
    """Which held-out events two versions are compared on (the module's docstring says why). `log_times`: the
    times of the events up to the later version's cut-off."""
    if later.parameters.get("refit_on_full_data") is True:
        return ComparisonHoldout(
            until=None,
            after=later.training_window_end,
            basis=f"{later} was refit on all its data, holdout included: the held-out events after its own cut-off",
        )
    after = earlier.training_window_end
    refit = earlier.parameters.get("refit_on_full_data") is True
    if after is not None and not refit and not (log_times >= after.timestamp()).any():
        return ComparisonHoldout(
            until=later.training_window_end,
            after=None,
            basis=f"no event arrived between {earlier}'s cut-off and {later}'s: both were trained on the training "
            "portion of the same split, and neither on its holdout, the whole of which is compared",
        )
    return ComparisonHoldout(
        until=later.training_window_end,
        after=after,
        basis=f"{later}'s holdout, only the events after {earlier}'s cut-off: neither version trained on them",
    )


def version_comparison_scores(*, a: ModelVersion, b: ModelVersion) -> dict:
    """The holdout, rows and segments of a comparison, a and b in the order asked (a model replay: minutes on
    large data)."""
    earlier, later = sorted((a, b), key=_cutoff_order)
    refit = later.parameters.get("refit_on_full_data") is True
    log = event_log_load(until=None if refit else later.training_window_end)
    holdout = comparison_holdout(earlier=earlier, later=later, log_times=log.ts)
    models = {}
    for version in (later, earlier):  # the later version first: the baselines are its replay's (see the gate)
        try:
            models[version.label] = trained_model_of(version)
        except ArtifactError as exc:
            raise ArtifactError(f"{version} cannot be compared: {exc.message}") from exc
    training = (later.manifest.get("params") or {}).get("training")
    if not isinstance(training, dict):
        raise ApplicationError(f"{later} cannot be compared: its manifest records no training parameters.")
    scores = models_score_on_holdout(
        until=holdout.until,
        after=holdout.after,
        params=TrainingParams(**training),
        models=models,
        log=log,
        cluster=training_cluster(),
    )
    if scores.users == 0:
        raise ApplicationError(
            f"Nothing to compare on yet: {_holdout_sentence(holdout, scores, later)} "
            "(no user has a held-out positive there). Compare again once newer events have arrived."
        )
    return json_safe(
        {
            "holdout": {
                "events": scores.events,
                "users": scores.users,
                "after": holdout.after.isoformat() if holdout.after else None,
                "until": holdout.until.isoformat() if holdout.until else None,
                "holdout_of": later.version,
                "basis": holdout.basis,
                "description": _holdout_sentence(holdout, scores, later),
            },
            "rows": _rows(scores, a=a, b=b, later=later),
            "segments": scores.segments,
        }
    )


def _cutoff_order(version: ModelVersion) -> tuple:
    end = version.training_window_end
    return (end is not None, end or timezone.now(), version.version)


def _holdout_sentence(holdout: ComparisonHoldout, scores: HoldoutScores, later: ModelVersion) -> str:
    since = f" after {holdout.after:%Y-%m-%d %H:%M}" if holdout.after else ""
    split = f"up to {later}'s cut-off {holdout.until:%Y-%m-%d %H:%M}" if holdout.until else "of every event so far"
    return (
        f"the {scores.events:,} held-out events{since} (the last 20% of each user's events {split}), "
        f"{scores.users:,} users with a held-out positive"
    )


def _rows(scores: HoldoutScores, *, a: ModelVersion, b: ModelVersion, later: ModelVersion) -> list[dict]:
    """One row per version (a, then b), then the ranking baselines, then the rating baselines."""
    rows = [
        {
            "name": version.label,
            "kind": "version",
            "version": version.version,
            "users": len(scores.models[version.label].user_ndcg),
            "metrics": {key: scores.models[version.label].metrics.get(key) for key in RANKING_KEYS + RATING_KEYS},
        }
        for version in (a, b)
    ]
    reference = scores.models[later.label]
    for name, metrics in (("popularity", reference.popularity), (CF_NAME, reference.ease)):
        rows.append(_baseline_row(name, {key: metrics.get(key) for key in RANKING_KEYS}, users=scores.users))
    for name in RATING_BASELINES:
        if name in scores.rating_baselines:
            metrics = scores.rating_baselines[name]
            rows.append(_baseline_row(name, {key: metrics.get(key) for key in RATING_KEYS}, users=None))
    return rows


def _baseline_row(name: str, metrics: dict, *, users: int | None) -> dict:
    return {"name": BASELINE_LABELS[name], "kind": "baseline", "version": None, "users": users, "metrics": metrics}
