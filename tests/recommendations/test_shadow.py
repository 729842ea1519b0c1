"""Shadow scoring leaves the response alone whatever happens to it, and a real shadow worker scores what
the web process published."""

import pytest

from recommendations import shadow
from recommendations.models import Impression
from recommendations.serving import deployed
from registry.services import model_version_promote, model_version_register
from retraining.services.rollout import challenger_deploy
from tests.conftest import wait_until
from tests.recommendations.factories import same_version_data, store_history, train_and_register

URL = "/api/v1/users/{}/recommendations"


def test_a_failed_publish_is_counted_and_never_raises(settings, monkeypatch):
    settings.SHADOW_INLINE = False
    from recommendations.tasks import shadow_score_task

    def broker_down(*args, **kwargs):
        raise ConnectionError("the broker is down")

    monkeypatch.setattr(shadow_score_task, "apply_async", broker_down)
    failed = shadow.stats["failed"]
    shadow.shadow_enqueue({"version": 1})
    assert shadow.stats["failed"] == failed + 1


def test_an_inline_job_that_fails_is_counted_and_never_raises(monkeypatch):
    def exploding(**kwargs):
        raise RuntimeError("the challenger exploded")

    monkeypatch.setattr("recommendations.serving.shadow_score", exploding)
    failed = shadow.stats["failed"]
    shadow.shadow_enqueue({"version": 1})
    assert shadow.stats["failed"] == failed + 1


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_shadow_worker_scores_the_requests_the_champion_answered(celery_worker_process, settings, tmp_path,
                                                                         serve_client):
    settings.SHADOW_INLINE, settings.MODEL_STORE = False, tmp_path / "store"
    store_history()
    champion = train_and_register(tmp_path)
    challenger = model_version_register(artifact_dir=tmp_path / "run", data=same_version_data(champion))
    model_version_promote(version=champion.version, actor="test")
    challenger_deploy(version=challenger.version, mode="shadow", actor="test", reason="")
    deployed.forget()
    answers = [serve_client.get(URL.format(f"user-{n}"), {"k": 5}).json() for n in range(5)]
    assert {answer["model_version"] for answer in answers} == {champion.version}
    shadowed = Impression.objects.filter(arm="shadow", shadow_of__in=[a["recommendation_id"] for a in answers])
    wait_until(lambda: shadowed.count() == 5, 60, message="the shadow worker's impressions")
    assert set(shadowed.values_list("routed_version", flat=True)) == {challenger.version}
