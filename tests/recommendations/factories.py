"""Trained models to serve, served lists and the events users answer them with, written straight to the
database."""

import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db.models import Max

from recommendations import sql
from recommendations.models import EndUser, Impression, Interaction
from recommendations.selectors.online import attribution_window
from recommendations.services.online_features import online_features_rebuild
from recommendations.services.outcomes import impression_outcomes_record
from registry.models import ModelVersion
from registry.services import VersionInput, model_version_register
from retraining.ml.params import TrainingParams
from retraining.services.training import model_train
from tests.retraining.factories import dataset_store, learnable_dataset


def train_and_register(tmp_path: Path, name: str = "run", params: TrainingParams | None = None) -> ModelVersion:
    result = model_train(output_dir=tmp_path / name, progress=None, params=params or TrainingParams())
    data = VersionInput(
        metrics=result.metrics,
        baseline_metrics=result.baselines,
        dataset_stats=result.dataset,
        parameters=result.manifest["params"],
        manifest=result.manifest,
    )
    return model_version_register(artifact_dir=tmp_path / name, data=data)


def store_history():
    dataset_store(learnable_dataset(users=80, items=60, per_user=20))
    online_features_rebuild()


def user(name="u1"):
    return EndUser.objects.get_or_create(external_id=name)[0]


def serve(
    who, items, at, *, version=1, arm="champion", strategy="model", experiment=None, shadow_of=None
) -> Impression:
    return Impression.objects.create(
        recommendation_id=uuid.uuid4(),
        user=who,
        model_version=version if strategy == "model" else None,
        routed_version=version,
        strategy=strategy,
        arm=arm,
        experiment_id=experiment,
        shadow_of=shadow_of,
        items=[item.pk for item in items],
        served_at=at,
    )


def event(who, item, kind, at, *, rec=None, value=None):
    """An event stored as ingestion stores it: the row, and its (user, item) pair if the pair is new."""
    stored = Interaction.objects.create(
        user=who,
        item=item,
        event_type=kind,
        timestamp=at,
        value=value,
        recommendation_id=rec.recommendation_id if rec else None,
    )
    sql.user_item_first_seen_insert(event_pks=[stored.pk])
    return stored


def outcomes_recorded() -> int:
    """Run the outcome recorder as beat would once the last list served so far has its attribution window
    closed; the number of outcome rows written."""
    latest = Impression.objects.aggregate(latest=Max("served_at"))["latest"]
    if latest is None:
        return 0
    return impression_outcomes_record(
        now=latest + attribution_window() + timedelta(seconds=settings.OUTCOME_LATE_SECONDS)
    )


def experiment_traffic(
    *,
    experiment: int,
    items,
    users: int,
    start,
    control_rate: float,
    treatment_rate: float,
    versions=(1, 2),
    treatment_arm="challenger",
    treatment_errors: float = 0.0,
    lists_per_user: int = 3,
    seed: int = 0,
    prefix: str = "x",
) -> None:
    """Users alternate between the champion's arm and the treatment arm; each sees `lists_per_user` lists of
    its arm, and clicks one of a list's items with its arm's probability. A share `treatment_errors` of the
    treatment's lists are fallbacks after an error."""
    rng = np.random.default_rng(seed)
    for n in range(users):
        who = user(f"{prefix}{n}")
        treated = n % 2 == 1
        for k in range(lists_per_user):
            at = start + timedelta(minutes=10 * k)
            failed = treated and rng.random() < treatment_errors
            shown = serve(
                who,
                items[:10],
                at,
                version=versions[treated],
                arm=treatment_arm if treated else "champion",
                experiment=experiment,
                strategy="error" if failed else "model",
            )
            if rng.random() < (treatment_rate if treated else control_rate):
                event(who, items[k % 10], "click", at + timedelta(minutes=2), rec=shown)
