"""Artifacts through Django's storage API: the local folder keeps its all-or-nothing writes, and an S3-compatible
store (moto's server, over HTTP) holds artifacts that the registry verifies, promotes, and web processes load
through a local cache keyed by sha256 — refusing a corrupted object exactly as a corrupted file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.config import Config

from registry.artifacts import ArtifactError, artifact_cache_dir, artifact_read, artifact_store
from registry.models import Deployment, DeploymentChange
from registry.services import model_version_promote
from tests.recommendations.factories import store_history, train_and_register
from tests.registry.factories import artifact_dir, registered_version
from tests.support.object_store import ObjectStore, s3_server
from tests.support.processes import REPO, free_port


@pytest.fixture
def model_store(settings, tmp_path):
    settings.MODEL_STORE = tmp_path / "store"
    settings.ARTIFACT_CACHE_DIR = None
    return settings.MODEL_STORE


@pytest.fixture
def s3(settings, model_store):
    with s3_server() as store:
        settings.STORAGES = {**settings.STORAGES, "artifacts": store.storage()}
        yield store


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _flip(data: bytes, at: int = 600) -> bytes:
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + 16]) + data[at + 16 :]


def test_a_failed_local_write_leaves_neither_the_artifact_nor_a_temporary_file(model_store, tmp_path, monkeypatch):
    def failing_fsync(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        artifact_store(source_dir=artifact_dir(tmp_path), name="v1")
    assert list(model_store.iterdir()) == []


def test_an_artifact_in_s3_is_an_object_of_the_bucket_and_reads_back_byte_for_byte(s3, tmp_path):
    source = artifact_dir(tmp_path)
    stored = artifact_store(source_dir=source, name="v1-abc")
    assert stored.path == "v1-abc.tar", "a remote artifact is recorded by its name in the store"
    assert len(s3.read("v1-abc.tar")) == stored.size
    assert artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256) == _files(source)
    assert (artifact_cache_dir() / f"{stored.sha256}.tar").stat().st_size == stored.size


def test_an_artifact_in_s3_is_never_overwritten(s3, tmp_path):
    first = artifact_store(source_dir=artifact_dir(tmp_path, "a"), name="v1")
    with pytest.raises(ArtifactError, match="never overwritten"):
        artifact_store(source_dir=artifact_dir(tmp_path, "b"), name="v1")
    assert artifact_read(path=first.path, size=first.size, sha256=first.sha256)["marker.txt"] == b"marker=a\n"
    assert [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]] == [s3.key("v1.tar")]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: _flip(data), "sha256"),
        (lambda data: data[:-700], "truncated"),
    ],
)
def test_a_corrupted_object_in_s3_is_refused_and_not_cached(s3, tmp_path, damage, message):
    stored = artifact_store(source_dir=artifact_dir(tmp_path), name="v1")
    s3.write(stored.path, damage(s3.read(stored.path)))
    with pytest.raises(ArtifactError, match=message):
        artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256)
    assert not list(artifact_cache_dir().glob("*.tar"))


def test_a_missing_object_is_refused_naming_the_store(s3, tmp_path):
    stored = artifact_store(source_dir=artifact_dir(tmp_path), name="v1")
    s3.client.delete_object(Bucket=s3.bucket, Key=s3.key(stored.path))
    with pytest.raises(ArtifactError, match="missing from the artifact store"):
        artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256)


def test_a_cached_copy_is_verified_on_every_read_and_a_damaged_one_is_fetched_again(s3, tmp_path):
    source = artifact_dir(tmp_path)
    stored = artifact_store(source_dir=source, name="v1")
    artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256)
    cached = artifact_cache_dir() / f"{stored.sha256}.tar"
    cached.write_bytes(_flip(cached.read_bytes()))
    assert artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256) == _files(source)
    s3.client.delete_object(Bucket=s3.bucket, Key=s3.key(stored.path))
    assert artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256) == _files(source), (
        "the repaired copy serves while the store is unreachable or the object gone"
    )


def test_the_cache_keeps_only_the_most_recently_used_copies(s3, tmp_path, settings):
    settings.ARTIFACT_CACHE_KEEP = 2
    stored = [artifact_store(source_dir=artifact_dir(tmp_path, f"m{n}"), name=f"v{n}") for n in range(3)]
    for artifact in stored:
        artifact_read(path=artifact.path, size=artifact.size, sha256=artifact.sha256)
    assert sorted(p.name for p in artifact_cache_dir().glob("*.tar")) == sorted(f"{a.sha256}.tar" for a in stored[1:])


@pytest.mark.django_db
def test_the_registry_verifies_and_promotes_a_version_stored_in_s3_and_refuses_a_corrupted_one(
    s3, tmp_path, admin_client_api
):
    champion, candidate = registered_version(tmp_path, marker="c1"), registered_version(tmp_path, marker="c2")
    response = admin_client_api.post(f"/api/v1/models/{champion.version}/promote", {}, format="json")
    assert response.status_code == 200, response.content
    s3.write(candidate.artifact_path, _flip(s3.read(candidate.artifact_path)))
    response = admin_client_api.post(f"/api/v1/models/{candidate.version}/promote", {}, format="json")
    assert response.status_code == 422 and response.json()["error"] == "artifact_invalid"
    assert "sha256" in response.json()["message"]
    assert Deployment.objects.get(alias="champion").version_id == champion.pk
    assert DeploymentChange.objects.filter(action="refuse", to_version=candidate).count() == 1


@pytest.mark.django_db
def test_a_model_trained_registered_and_promoted_in_s3_is_served_from_the_local_cache(
    s3, tmp_path, serve_client, settings
):
    settings.MODEL_POLL_SECONDS = 0
    store_history()
    version = train_and_register(tmp_path)
    model_version_promote(version=version.version, actor="test")
    assert not Path(version.artifact_path).is_absolute() and s3.read(version.artifact_path)
    for copy in artifact_cache_dir().glob("*.tar"):
        copy.unlink()  # as on a web host that never saw the registration
    body = serve_client.get("/api/v1/users/user-3/recommendations", {"k": 5}).json()
    assert body["model_version"] == version.version and body["strategy"] == "model" and len(body["items"]) == 5
    assert [p.name for p in artifact_cache_dir().glob("*.tar")] == [f"{version.artifact_sha256}.tar"]


def _settings_of(**env) -> subprocess.CompletedProcess:
    script = (
        "import django, json; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.STORAGES['artifacts']))"
    )
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "recsite.settings_test", **env}
    return subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ARTIFACT_STORAGE": "s3", "ARTIFACT_S3_BUCKET": ""}, "ARTIFACT_STORAGE=s3 needs ARTIFACT_S3_BUCKET"),
        ({"ARTIFACT_STORAGE": "gcs"}, "ARTIFACT_STORAGE must be 'local' or 's3', got 'gcs'"),
        ({"ARTIFACT_CACHE_KEEP": "1"}, "ARTIFACT_CACHE_KEEP must be >= 2"),
    ],
)
def test_a_bad_artifact_storage_setting_stops_the_service_with_its_reason(env, message):
    done = _settings_of(**env)
    assert done.returncode != 0 and f"ImproperlyConfigured: {message}" in done.stderr


def test_the_s3_settings_come_from_the_environment():
    store = ObjectStore(endpoint="http://127.0.0.1:9", bucket="models")
    done = _settings_of(**store.environment())
    assert done.returncode == 0, done.stderr
    expected = store.storage()
    for credential in ("access_key", "secret_key"):  # from AWS_* in the environment, read by django-storages
        del expected["OPTIONS"][credential]
    assert json.loads(done.stdout.splitlines()[-1]) == expected


@pytest.mark.django_db
def test_with_the_store_unreachable_a_promotion_is_refused_and_a_cached_copy_still_loads(s3, tmp_path, settings):
    champion, candidate = registered_version(tmp_path, marker="c1"), registered_version(tmp_path, marker="c2")
    model_version_promote(version=champion.version, actor="test")  # verified: now in this host's cache
    unreachable = ObjectStore(endpoint=f"http://127.0.0.1:{free_port()}", bucket=s3.bucket).storage()
    unreachable["OPTIONS"]["client_config"] = Config(connect_timeout=1, retries={"max_attempts": 1})
    settings.STORAGES = {**settings.STORAGES, "artifacts": unreachable}
    with pytest.raises(ArtifactError, match="could not be read from the artifact store"):
        model_version_promote(version=candidate.version, actor="test")
    assert Deployment.objects.get(alias="champion").version_id == champion.pk
    files = artifact_read(path=champion.artifact_path, size=champion.artifact_size, sha256=champion.artifact_sha256)
    assert files["marker.txt"] == b"marker=c1\n"
