"""Registry writes: register a version, promote it, roll back. Every pointer flip happens in one
transaction with a compare-and-set on the expected current version and leaves an audit row."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.db import IntegrityError, transaction
from django.db.models import Max

from recsite.errors import ApplicationError, ConflictError, NotFoundError
from registry.artifacts import artifact_store
from registry.models import Alias, Deployment, DeploymentChange, ModelStatus, ModelVersion
from registry.selectors import champion_version

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


def model_version_register(*, artifact_dir: Path, data: VersionInput, status: str = ModelStatus.CANDIDATE) -> ModelVersion:
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
        raise NotFoundError(f"Model version v{version} does not exist.")


def model_version_promote(*, version: int, actor: str, reason: str = "", expected_current=UNSET) -> DeploymentChange:
    """Point `champion` at `version`. The flip is a compare-and-set on `expected_current` (a version
    number or None; by default the champion as read when the call starts), so of two racing changes
    exactly one wins and the other gets a conflict."""
    target = model_version_get(version=version)
    if target.status not in PROMOTABLE:
        raise ApplicationError(f"v{version} is {target.status}; only a candidate, retired or rejected version can be promoted.")
    if expected_current is UNSET:
        current = champion_version()
        expected_current = current.version if current else None
    return _champion_flip(target, DeploymentChange.Action.PROMOTE, actor, reason, expected_current)


def model_version_rollback(*, actor: str, reason: str = "", version: int | None = None, expected_current=UNSET) -> DeploymentChange:
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
    with transaction.atomic():
        Deployment.objects.get_or_create(alias=Alias.CHAMPION)
        pointer = Deployment.objects.select_for_update(of=("self",)).select_related("version").get(alias=Alias.CHAMPION)
        current = pointer.version
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
        return DeploymentChange.objects.create(
            alias=Alias.CHAMPION, action=action, from_version=current, to_version=target, actor=actor, reason=reason
        )


def model_version_reject(*, version: int, actor: str, reason: str) -> DeploymentChange:
    """Mark a candidate rejected (a gate decision or an operator's), with the reason in the audit trail."""
    with transaction.atomic():
        updated = ModelVersion.objects.filter(version=version, status=ModelStatus.CANDIDATE).update(status=ModelStatus.REJECTED)
        if not updated:
            raise ApplicationError(f"v{version} is not a candidate.")
        target = ModelVersion.objects.get(version=version)
        return DeploymentChange.objects.create(
            alias=Alias.CHAMPION, action=DeploymentChange.Action.REJECT, to_version=target, actor=actor, reason=reason
        )
