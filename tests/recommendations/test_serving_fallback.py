import json

import pytest

from recommendations.models import Interaction
from registry.artifacts import ArtifactError
from registry.models import Deployment
from registry.services import VersionInput, model_version_promote, model_version_register
from tests.recommendations.test_serving import get, isolated_serving, store_history  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog_with_history():
    store_history()


def test_without_a_champion_everyone_gets_the_fallback(catalog_with_history, serve_client):
    body = get(serve_client, "user-3", k=5).json()
    assert body["model_version"] is None and body["strategy"] == "popular"
    seen = set(Interaction.objects.filter(user__external_id="user-3").values_list("item__external_id", flat=True))
    assert not {i["item_id"] for i in body["items"]} & seen


def test_an_artifact_that_is_not_a_model_is_never_served(catalog_with_history, serve_client, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"features": {}}))
    version = model_version_register(artifact_dir=folder, data=VersionInput({}, {}, {}, {}, {}))
    with pytest.raises(ArtifactError):
        model_version_promote(version=version.version, actor="test")
    Deployment.objects.update_or_create(alias="champion", defaults={"version": version})  # past the registry
    body = get(serve_client, "user-3").json()
    assert body["strategy"] == "popular" and body["model_version"] is None
