"""The registry verifies a version's artifact before any pointer moves to it: file present, size and sha256 as
registered, a readable tar, a JSON manifest, and both models loadable. A refusal is a JSON 422 naming the version
and the problem, leaves the pointer where it was, and is an audit row of its own, committed."""

import hashlib
import io
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from registry.artifacts import ArtifactError
from registry.models import Deployment, DeploymentChange, ModelStatus, ModelVersion
from registry.selectors import running_experiment, serving_pointers
from registry.services import (
    ChallengerInput,
    challenger_start,
    challenger_traffic_advance,
    model_version_promote,
    model_version_rollback,
)
from retraining.services.policy import policy_active
from retraining.services.rollout import candidate_deploy
from tests.registry.factories import artifact_dir, registered_version
from tests.support.processes import REPO, process_env

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def champion_and_candidate(tmp_path):
    champion, candidate = registered_version(tmp_path, marker="c1"), registered_version(tmp_path, marker="c2")
    model_version_promote(version=champion.version, actor="test")
    return champion, candidate


def _flip_bytes(path: Path, at: int = 600, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-700])


def _register_as_is(path: Path, data: bytes) -> ModelVersion:
    """A version whose artifact is `data` with a matching size and sha256 (damage that no checksum shows)."""
    path.write_bytes(data)
    number = (ModelVersion.objects.order_by("-version").values_list("version", flat=True).first() or 0) + 1
    return ModelVersion.objects.create(
        version=number,
        status=ModelStatus.CANDIDATE,
        artifact_path=str(path),
        artifact_size=len(data),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
    )


def _tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _rebuilt(folder: Path, path: Path, name: str, data: bytes | None) -> ModelVersion:
    """The model directory's tar with member `name` replaced by `data` (or left out), registered as is."""
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    if data is None:
        del files[name]
    else:
        files[name] = data
    return _register_as_is(path, _tar_of(files))


def _assert_refused(champion: ModelVersion, refused: ModelVersion, action: str, alias: str = "champion") -> None:
    assert Deployment.objects.get(alias="champion").version_id == champion.pk
    refused.refresh_from_db()
    assert refused.status != ModelStatus.ACTIVE
    row = DeploymentChange.objects.get(action="refuse", to_version=refused)
    assert (row.alias, row.details["refused"]) == (alias, action) and f"v{refused.version}" in row.reason


@pytest.mark.django_db(transaction=True)
def test_promoting_a_version_with_flipped_bytes_is_a_422_that_moves_nothing_and_is_audited(
    champion_and_candidate, admin_client_api
):
    champion, candidate = champion_and_candidate
    _flip_bytes(Path(candidate.artifact_path))
    response = admin_client_api.post(f"/api/v1/models/{candidate.version}/promote", {}, format="json")
    assert response.status_code == 422 and response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == "artifact_invalid"
    assert f"v{candidate.version}" in body["message"] and "sha256" in body["message"]
    _assert_refused(champion, candidate, "promote")  # transaction=True: the refusal row was committed


@pytest.mark.django_db(transaction=True)
def test_manage_py_promote_of_a_truncated_artifact_exits_non_zero_with_the_message(champion_and_candidate, settings):
    champion, candidate = champion_and_candidate
    _truncate(Path(candidate.artifact_path))
    finished = subprocess.run(
        [sys.executable, "manage.py", "promote", str(candidate.version)],
        cwd=REPO,
        env=process_env(MODEL_STORE=str(settings.MODEL_STORE)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode != 0
    assert f"v{candidate.version} cannot be deployed" in finished.stderr and "truncated" in finished.stderr
    _assert_refused(champion, candidate, "promote")


@pytest.mark.django_db
@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_the_promote_and_rollback_commands_exit_non_zero_on_a_truncated_artifact(champion_and_candidate, command):
    champion, candidate = champion_and_candidate
    _truncate(Path(candidate.artifact_path))
    with pytest.raises(CommandError, match=rf"v{candidate.version} cannot be deployed: .*truncated"):
        call_command(command, candidate.version)
    _assert_refused(champion, candidate, command)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda folder, path: path.unlink(), "missing"),
        (lambda folder, path: _register_as_is(path, b"not a tar archive " * 600), "not a readable archive"),
        (lambda folder, path: _rebuilt(folder, path, "manifest.json", None), "no manifest.json"),
        (lambda folder, path: _rebuilt(folder, path, "manifest.json", b"{not json"), "not JSON"),
        (lambda folder, path: _rebuilt(folder, path, "ranker.txt", b"tree\nnonsense"), "models do not load"),
        (lambda folder, path: _rebuilt(folder, path, "regressor.txt", None), "regressor"),
    ],
)
def test_any_damage_to_an_artifact_is_refused_with_what_failed(champion_and_candidate, tmp_path, damage, problem):
    champion, candidate = champion_and_candidate
    damaged = damage(artifact_dir(tmp_path, "c2"), Path(candidate.artifact_path)) or candidate
    with pytest.raises(ArtifactError, match=problem) as refused:
        model_version_promote(version=damaged.version, actor="op")
    assert refused.value.status_code == 422 and refused.value.code == "artifact_invalid"
    _assert_refused(champion, damaged, "promote")


@pytest.mark.django_db
def test_a_rollback_to_a_damaged_version_is_refused(champion_and_candidate):
    champion, candidate = champion_and_candidate
    model_version_promote(version=candidate.version, actor="op")
    _flip_bytes(Path(champion.artifact_path))
    with pytest.raises(ArtifactError):
        model_version_rollback(actor="op")
    assert Deployment.objects.get(alias="champion").version_id == candidate.pk
    assert DeploymentChange.objects.filter(action="refuse", to_version=champion, details__refused="rollback").exists()


@pytest.mark.django_db
def test_the_gates_automatic_promotion_is_refused_for_a_damaged_candidate(champion_and_candidate):
    champion, candidate = champion_and_candidate
    _truncate(Path(candidate.artifact_path))
    with pytest.raises(ArtifactError):
        candidate_deploy(
            version=candidate.version, champion=champion.version, reason="gate passed", policy=policy_active()
        )
    _assert_refused(champion, candidate, "promote")


@pytest.mark.django_db
def test_a_damaged_challenger_is_not_started_and_a_canary_damaged_later_neither_advances_nor_is_promoted(
    champion_and_candidate, tmp_path
):
    champion, candidate = champion_and_candidate
    data = ChallengerInput(version=candidate.version, mode="canary", steps=(10, 50, 100))
    original = Path(candidate.artifact_path).read_bytes()
    _flip_bytes(Path(candidate.artifact_path))
    with pytest.raises(ArtifactError):
        challenger_start(data=data, actor="op", reason="try", at=T0)
    assert serving_pointers().challenger is None and running_experiment() is None
    refusals = DeploymentChange.objects.filter(action="refuse", alias="challenger")
    assert refusals.filter(details__refused="challenger_start").exists()

    Path(candidate.artifact_path).write_bytes(original)
    experiment = challenger_start(data=data, actor="op", reason="try", at=T0)
    _flip_bytes(Path(candidate.artifact_path))
    with pytest.raises(ArtifactError):
        challenger_traffic_advance(experiment_id=experiment.pk, step_index=0, actor="rollout", reason="held", at=T0)
    assert serving_pointers().traffic_percent == 10
    assert refusals.filter(details__refused="traffic").exists()
    with pytest.raises(ArtifactError):  # the canary's last step is a promotion (retraining.services.rollout)
        model_version_promote(version=candidate.version, actor="rollout", expected_current=champion.version)
    assert serving_pointers().champion == champion.version


@pytest.mark.django_db
def test_a_whole_artifact_is_promoted(champion_and_candidate):
    champion, candidate = champion_and_candidate
    change = model_version_promote(version=candidate.version, actor="op")
    assert (change.from_version, change.to_version) == (champion, candidate)
    assert not DeploymentChange.objects.filter(action="refuse").exists()
