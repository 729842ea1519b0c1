"""Registry writes: register a version, promote it, roll back. Every pointer flip happens in one
transaction with a compare-and-set on the expected current version and leaves an audit row.

No pointer moves to a version whose artifact fails verification (`model_version_verify`): the refusal is
an audit row of its own (action `refuse`), committed although nothing flipped. Verifying means loading the
models, which takes time, so it happens before the flip's transaction and outside the pointer's lock."""

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.module_loading import import_string

from recsite.errors import ApplicationError, ConflictError, NotFoundError
from registry.artifacts import MANIFEST_FILE, ArtifactError, artifact_read, artifact_store
from registry.models import (
    AB_TRAFFIC_PERCENT,
    SHADOW_TRAFFIC_PERCENT,
    Alias,
    Deployment,
    DeploymentChange,
    DeploymentMode,
    Experiment,
    ModelStatus,
    ModelVersion,
    challenger_input_error,
)
from registry.selectors import champion_version, running_experiment

logger = logging.getLogger(__name__)

UNSET = object()
PROMOTABLE = {ModelStatus.CANDIDATE, ModelStatus.RETIRED, ModelStatus.REJECTED}


@dataclass(frozen=True)
class VersionInput:
    metrics: dict
    baseline_metrics: dict
    dataset_stats: dict
    parameters: dict
    manifest: dict
    training_window_start: datetime | None = None
    training_window_end: datetime | None = None
    trigger_reason: str = ""
    training_duration_s: float | None = None
    training_run_id: int | None = None
    compiled_checksums: dict = field(default_factory=dict)  # from a compile of this very model (ranker_precompile)


def model_version_register(
    *, artifact_dir: Path, data: VersionInput, status: str = ModelStatus.CANDIDATE
) -> ModelVersion:
    """Store the artifact immutably and create the next version number for it (safe under concurrency:
    the number is unique in the database and a collision is retried)."""
    for _ in range(10):
        try:
            with transaction.atomic():
                number = (ModelVersion.objects.aggregate(top=Max("version"))["top"] or 0) + 1
                version = ModelVersion.objects.create(version=number, status=ModelStatus.TRAINING, **vars(data))
        except IntegrityError:
            continue
        break
    else:
        raise ConflictError("Could not allocate a version number; retry.")
    try:
        stored = artifact_store(source_dir=artifact_dir, name=f"v{version.version}-{uuid.uuid4().hex[:12]}")
    except Exception:
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelStatus.FAILED)
        raise
    ModelVersion.objects.filter(pk=version.pk).update(
        status=status, artifact_path=stored.path, artifact_size=stored.size, artifact_sha256=stored.sha256
    )
    version.refresh_from_db()
    return version


def model_version_get(*, version: int) -> ModelVersion:
    try:
        return ModelVersion.objects.get(version=version)
    except ModelVersion.DoesNotExist:
        raise NotFoundError(f"Model version v{version} does not exist.") from None


def model_version_verify(*, version: ModelVersion, refused: str, alias: str, actor: str) -> None:
    """Check that `version` can serve before a pointer moves to it: its file is present with the size and
    sha256 of its row, the tar reads, the manifest parses and the models load (settings.
    REGISTRY_ARTIFACT_VERIFIER, a function of the members' bytes that the serving app provides, because the
    registry holds no ML). A failure writes a `refuse` audit row for the `refused` action and raises a 422."""
    try:
        files = artifact_read(path=version.artifact_path, size=version.artifact_size, sha256=version.artifact_sha256)
        _manifest_check(files)
        import_string(settings.REGISTRY_ARTIFACT_VERIFIER)(files=files)
    except Exception as exc:
        logger.warning("refusing to %s %s: its artifact fails verification", refused, version, exc_info=True)
        loading = f"its models do not load ({type(exc).__name__}: {exc})"
        problem = exc.message if isinstance(exc, ArtifactError) else loading
        message = f"{version} cannot be deployed: {problem}"[:500]
        DeploymentChange.objects.create(
            alias=alias,
            action=DeploymentChange.Action.REFUSE,
            to_version=version,
            actor=actor,
            reason=message,
            details={"refused": refused},
        )
        raise ArtifactError(message, extra={"version": version.version}) from exc


def _manifest_check(files: dict[str, bytes]) -> None:
    try:
        manifest = json.loads(files[MANIFEST_FILE])
    except KeyError:
        raise ArtifactError(f"the artifact has no {MANIFEST_FILE}") from None
    except ValueError as exc:
        raise ArtifactError(f"its {MANIFEST_FILE} is not JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"its {MANIFEST_FILE} is not a JSON object")


def model_version_compiled_record(*, version: int, key: str, sha256: str) -> None:
    """Record the digest of a version's compiled ranker for compilation `key`, unless one is recorded (the
    first trusted compile wins). Callers compiled it themselves from the verified artifact."""
    with transaction.atomic():
        row = ModelVersion.objects.select_for_update().get(version=version)
        if key not in row.compiled_checksums:
            row.compiled_checksums[key] = sha256
            row.save(update_fields=["compiled_checksums"])


def model_version_promote(*, version: int, actor: str, reason: str = "", expected_current=UNSET) -> DeploymentChange:
    """Point `champion` at `version`. The flip is a compare-and-set on `expected_current` (a version
    number or None; by default the champion as read when the call starts), so of two racing changes
    exactly one wins and the other gets a conflict."""
    target = model_version_get(version=version)
    if target.status not in PROMOTABLE:
        raise ApplicationError(
            f"v{version} is {target.status}; only a candidate, retired or rejected version can be promoted."
        )
    model_version_verify(version=target, refused=DeploymentChange.Action.PROMOTE, alias=Alias.CHAMPION, actor=actor)
    if expected_current is UNSET:
        current = champion_version()
        expected_current = current.version if current else None
    return _champion_flip(target, DeploymentChange.Action.PROMOTE, actor, reason, expected_current)


def model_version_rollback(
    *, actor: str, reason: str = "", version: int | None = None, expected_current=UNSET
) -> DeploymentChange:
    """Point `champion` back at the version it served before the current one, or at `version`."""
    current = champion_version()
    if current is None:
        raise ApplicationError("There is no champion to roll back from.")
    if version is None:
        target = _previous_champion(current)
        if target is None:
            raise ApplicationError(f"{current} has no earlier champion to roll back to; name a version.")
    else:
        target = model_version_get(version=version)
        if target.status in (ModelStatus.FAILED, ModelStatus.TRAINING) or not target.artifact_sha256:
            raise ApplicationError(f"v{version} is {target.status} and cannot serve.")
    if target.pk == current.pk:
        raise ApplicationError(f"{target} is already the champion.")
    model_version_verify(version=target, refused=DeploymentChange.Action.ROLLBACK, alias=Alias.CHAMPION, actor=actor)
    if expected_current is UNSET:
        expected_current = current.version
    return _champion_flip(target, DeploymentChange.Action.ROLLBACK, actor, reason, expected_current)


def _previous_champion(current: ModelVersion) -> ModelVersion | None:
    change = (
        DeploymentChange.objects.filter(alias=Alias.CHAMPION, to_version=current, from_version__isnull=False)
        .select_related("from_version")
        .first()
    )
    return change.from_version if change else None


def _champion_flip(target: ModelVersion, action: str, actor: str, reason: str, expected_current) -> DeploymentChange:
    """The compare-and-set. A racing flip that slipped past it would still hit the database's one-active-
    version constraint: that is a conflict too, never a 500."""
    try:
        return _champion_flip_locked(target, action, actor, reason, expected_current)
    except IntegrityError:
        raise ConflictError(
            f"Another change of the champion won while {target} was being promoted; reload and retry."
        ) from None


@transaction.atomic
def _champion_flip_locked(
    target: ModelVersion, action: str, actor: str, reason: str, expected_current
) -> DeploymentChange:
    Deployment.objects.get_or_create(alias=Alias.CHAMPION)
    pointer = Deployment.objects.select_for_update().get(alias=Alias.CHAMPION)
    # Read after the lock, in a statement of its own: a join in the locking query would read the version
    # row as of that statement's snapshot, before the flip this one waited for (then `current` is stale).
    current = ModelVersion.objects.filter(pk=pointer.version_id).first() if pointer.version_id else None
    if (current.version if current else None) != expected_current:
        expected = f"v{expected_current}" if expected_current else "no champion"
        raise ConflictError(
            f"The champion is {current or 'unset'}, not {expected}: another change won; reload and retry.",
            extra={"current_version": current.version if current else None},
        )
    if current and current.pk == target.pk:
        raise ApplicationError(f"{target} is already the champion.")
    pointer.version = target
    pointer.save(update_fields=["version", "updated_at"])
    if current:
        ModelVersion.objects.filter(pk=current.pk).update(status=ModelStatus.RETIRED)
    ModelVersion.objects.filter(pk=target.pk).update(status=ModelStatus.ACTIVE)
    change = DeploymentChange.objects.create(
        alias=Alias.CHAMPION, action=action, from_version=current, to_version=target, actor=actor, reason=reason
    )
    _experiment_end_on_champion_change(target, actor)
    deployment_hooks_on_commit(change=change)
    return change


def deployment_hooks_on_commit(*, change: DeploymentChange) -> None:
    """Tell settings.REGISTRY_DEPLOYMENT_HOOKS (mirrors outside the registry, e.g. MLflow's aliases) that a pointer
    moved, once the change commits: never inside the pointer's transaction, and a hook that fails is logged (robust)
    and can neither undo the change nor fail the call that made it."""
    for path in settings.REGISTRY_DEPLOYMENT_HOOKS:
        transaction.on_commit(partial(import_string(path), change_id=change.pk), robust=True)


def _experiment_end_on_champion_change(target: ModelVersion, actor: str) -> None:
    """A champion change ends the running experiment: it won when its challenger became champion; otherwise
    its baseline is gone and its comparison means nothing any more."""
    experiment = running_experiment(lock=True)
    if experiment is None:
        return
    if experiment.version_id == target.pk:
        _experiment_end(experiment, Experiment.Status.PROMOTED, actor, f"{target} became the champion", at=None)
    else:
        _experiment_end(experiment, Experiment.Status.STOPPED, actor, f"the champion changed to {target}", at=None)


def model_version_reject(*, version: int, actor: str, reason: str) -> DeploymentChange:
    """Mark a candidate rejected (a gate decision or an operator's), with the reason in the audit trail."""
    with transaction.atomic():
        updated = ModelVersion.objects.filter(version=version, status=ModelStatus.CANDIDATE).update(
            status=ModelStatus.REJECTED
        )
        if not updated:
            raise ApplicationError(f"v{version} is not a candidate.")
        target = ModelVersion.objects.get(version=version)
        return DeploymentChange.objects.create(
            alias=Alias.CHAMPION, action=DeploymentChange.Action.REJECT, to_version=target, actor=actor, reason=reason
        )


@dataclass(frozen=True)
class ChallengerInput:
    version: int
    mode: str
    traffic_percent: int | None = None  # default: SHADOW_TRAFFIC_PERCENT or AB_TRAFFIC_PERCENT
    steps: tuple[int, ...] = ()
    min_step_seconds: int = 3600
    min_impressions: int = 1000


def challenger_start(
    *, data: ChallengerInput, actor: str, reason: str, at: datetime, replace: bool = False
) -> Experiment:
    """Deploy `data.version` as the challenger in shadow, A/B or canary mode (a canary starts at its first
    step). One experiment runs at a time: a second start is a conflict unless `replace`, which stops the
    running one first (audited, as superseded)."""
    target = model_version_get(version=data.version)
    _challenger_check(target, data)
    model_version_verify(
        version=target, refused=DeploymentChange.Action.CHALLENGER_START, alias=Alias.CHALLENGER, actor=actor
    )
    traffic = _starting_traffic(data)
    with transaction.atomic():
        pointer = _challenger_pointer()
        running = running_experiment(lock=True)
        if running is not None:
            if not replace:
                raise ConflictError(f"{running} is running; stop it first.", extra={"experiment_id": running.pk})
            _experiment_end(running, Experiment.Status.STOPPED, actor, f"superseded by {target}", at=at)
        champion = Deployment.objects.select_related("version").filter(alias=Alias.CHAMPION).first()
        experiment = Experiment.objects.create(
            version=target,
            champion=champion.version if champion else None,
            mode=data.mode,
            traffic_percent=traffic,
            steps=list(data.steps),
            step_started_at=at,
            min_step_seconds=data.min_step_seconds,
            min_impressions=data.min_impressions,
            started_by=actor,
            started_at=at,
            outcome_reason="",
        )
        pointer.version, pointer.mode, pointer.traffic_percent, pointer.experiment = (
            target,
            data.mode,
            traffic,
            experiment,
        )
        pointer.save()
        change = DeploymentChange.objects.create(
            alias=Alias.CHALLENGER,
            action=DeploymentChange.Action.CHALLENGER_START,
            to_version=target,
            actor=actor,
            reason=reason,
            details={
                "experiment_id": experiment.pk,
                "mode": data.mode,
                "traffic_percent": traffic,
                "steps": list(data.steps),
            },
        )
        deployment_hooks_on_commit(change=change)
        return experiment


def _starting_traffic(data: ChallengerInput) -> int:
    if data.mode == DeploymentMode.CANARY:
        return data.steps[0]
    if data.traffic_percent is None:
        return SHADOW_TRAFFIC_PERCENT if data.mode == DeploymentMode.SHADOW else AB_TRAFFIC_PERCENT
    return data.traffic_percent


def _challenger_check(target: ModelVersion, data: ChallengerInput) -> None:
    if target.status not in PROMOTABLE or not target.artifact_sha256:
        raise ApplicationError(
            f"{target} is {target.status}; only a candidate, retired or rejected version can be a challenger."
        )
    champion = champion_version()
    if champion is None:
        raise ApplicationError("There is no champion to compare a challenger with; promote a version first.")
    if champion.pk == target.pk:
        raise ApplicationError(f"{target} is the champion.")
    if error := challenger_input_error(mode=data.mode, traffic_percent=data.traffic_percent, steps=data.steps):
        raise ApplicationError(error)


def challenger_stop(
    *,
    actor: str,
    reason: str,
    at: datetime,
    reject: bool = False,
    outcome: str = Experiment.Status.STOPPED,
    experiment_id: int | None = None,
) -> Experiment:
    """End the running experiment and clear the challenger pointer; with `reject`, the challenger's
    version is also marked rejected. `experiment_id` makes it a compare-and-set on which one runs."""
    with transaction.atomic():
        experiment = _running_or_error(experiment_id)
        _experiment_end(experiment, outcome, actor, reason, at=at)
        if reject:
            ModelVersion.objects.filter(pk=experiment.version_id, status=ModelStatus.CANDIDATE).update(
                status=ModelStatus.REJECTED
            )
            DeploymentChange.objects.create(
                alias=Alias.CHALLENGER,
                action=DeploymentChange.Action.REJECT,
                to_version_id=experiment.version_id,
                actor=actor,
                reason=reason,
            )
        experiment.refresh_from_db()
        return experiment


def challenger_traffic_advance(
    *, experiment_id: int, step_index: int, actor: str, reason: str, at: datetime
) -> Experiment:
    """Move a canary from its current step to the next one (a compare-and-set on the step it is at), once its
    version's artifact is verified again (more traffic goes to it)."""
    experiment = running_experiment()
    if experiment is not None and experiment.pk == experiment_id:
        model_version_verify(
            version=experiment.version, refused=DeploymentChange.Action.TRAFFIC, alias=Alias.CHALLENGER, actor=actor
        )
    with transaction.atomic():
        experiment = _running_or_error(experiment_id)
        if experiment.mode != DeploymentMode.CANARY or experiment.step_index != step_index:
            raise ConflictError(f"{experiment} is not a canary at step {step_index}.")
        if step_index + 1 >= len(experiment.steps):
            raise ApplicationError(f"{experiment} is at its last step.")
        traffic = experiment.steps[step_index + 1]
        Experiment.objects.filter(pk=experiment.pk).update(
            step_index=step_index + 1, step_started_at=at, traffic_percent=traffic
        )
        Deployment.objects.filter(alias=Alias.CHALLENGER, experiment=experiment).update(traffic_percent=traffic)
        DeploymentChange.objects.create(
            alias=Alias.CHALLENGER,
            action=DeploymentChange.Action.TRAFFIC,
            from_version_id=experiment.version_id,
            to_version_id=experiment.version_id,
            actor=actor,
            reason=reason,
            details={"experiment_id": experiment.pk, "from_percent": experiment.traffic_percent, "to_percent": traffic},
        )
        experiment.refresh_from_db()
        return experiment


def challenger_report_save(*, experiment_id: int, report: dict) -> None:
    Experiment.objects.filter(pk=experiment_id).update(last_report=report)


def _running_or_error(experiment_id: int | None) -> Experiment:
    experiment = running_experiment(lock=True)
    if experiment is None:
        raise ApplicationError("No experiment is running.")
    if experiment_id is not None and experiment.pk != experiment_id:
        raise ConflictError(f"Experiment {experiment_id} is no longer running; {experiment} is.")
    return experiment


def _challenger_pointer() -> Deployment:
    Deployment.objects.get_or_create(alias=Alias.CHALLENGER)
    return Deployment.objects.select_for_update().get(alias=Alias.CHALLENGER)


def _experiment_end(experiment: Experiment, outcome: str, actor: str, reason: str, *, at: datetime | None) -> None:
    Experiment.objects.filter(pk=experiment.pk).update(
        status=outcome, ended_at=at or timezone.now(), outcome_reason=reason
    )
    Deployment.objects.filter(alias=Alias.CHALLENGER).update(
        version=None, mode=DeploymentMode.NONE, traffic_percent=0, experiment=None
    )
    change = DeploymentChange.objects.create(
        alias=Alias.CHALLENGER,
        action=DeploymentChange.Action.CHALLENGER_STOP,
        from_version_id=experiment.version_id,
        actor=actor,
        reason=reason,
        details={"experiment_id": experiment.pk, "outcome": outcome},
    )
    deployment_hooks_on_commit(change=change)
