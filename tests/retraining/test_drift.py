import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from recommendations.models import EndUser, Impression
from retraining.services.drift import Window, prediction_drift
from retraining.services.policy import policy_active
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def serve(version, user, start, lists, mean, seed):
    rng = np.random.default_rng(seed)
    Impression.objects.bulk_create(
        [
            Impression(
                recommendation_id=uuid.uuid4(),
                user=user,
                model_version=version.version,
                strategy="model",
                items=list(range(10)),
                scores=sorted(rng.normal(mean, 1.0, 10).tolist(), reverse=True),
                served_at=start + timedelta(minutes=10 * n),
            )
            for n in range(lists)
        ]
    )


@pytest.mark.parametrize("later_mean, verdict", [(0.0, "ok"), (1.5, "drift")])
def test_prediction_drift_compares_the_champions_served_scores_with_its_first_window(tmp_path, later_mean, verdict):
    version, user = registered_version(tmp_path), EndUser.objects.create(external_id="u")
    serve(version, user, T0, 100, 0.0, seed=1)
    serve(version, user, T0 + timedelta(days=2), 100, later_mean, seed=2)
    window = Window(start=T0 + timedelta(days=2), end=T0 + timedelta(days=3), events=0)
    score = prediction_drift(champion=version, window=window, policy=policy_active())
    assert score["verdict"] == verdict, score
    assert score["rows"] == 1000


def test_prediction_drift_waits_for_enough_served_lists(tmp_path):
    version, user = registered_version(tmp_path), EndUser.objects.create(external_id="u")
    serve(version, user, T0, 100, 0.0, seed=1)
    serve(version, user, T0 + timedelta(days=2), 10, 3.0, seed=2)
    window = Window(start=T0 + timedelta(days=2), end=T0 + timedelta(days=3), events=0)
    assert prediction_drift(champion=version, window=window, policy=policy_active())["verdict"] == "no data"
