import threading
from pathlib import Path

import pytest
from django.db import connection, connections

from recsite.errors import ApplicationError, ConflictError
from registry.artifacts import ArtifactError, artifact_read, artifact_store
from registry.models import Alias, Deployment, DeploymentChange, ModelStatus, ModelVersion
from registry.selectors import champion_version, model_history_markdown, model_versions_compare
from registry.services import model_version_promote, model_version_reject, model_version_rollback
from tests.registry.factories import artifact_dir, registered_version


def test_a_stored_artifact_reads_back_byte_for_byte(tmp_path):
    source = artifact_dir(tmp_path)
    stored = artifact_store(source_dir=source, name="v1")
    files = artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256)
    assert files == {p.name: p.read_bytes() for p in source.iterdir()}
    assert not [p for p in Path(stored.path).parent.iterdir() if p.name.endswith(".tmp")]


def test_an_artifact_is_never_overwritten(tmp_path):
    artifact_store(source_dir=artifact_dir(tmp_path, "a"), name="v1")
    with pytest.raises(ArtifactError, match="never overwritten"):
        artifact_store(source_dir=artifact_dir(tmp_path, "b"), name="v1")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes().replace(b"marker=a", b"marker=b")), "sha256"),
    ],
)
def test_a_missing_truncated_or_tampered_artifact_is_refused(tmp_path, damage, message):
    stored = artifact_store(source_dir=artifact_dir(tmp_path), name="v1")
    damage(Path(stored.path))
    with pytest.raises(ArtifactError, match=message):
        artifact_read(path=stored.path, size=stored.size, sha256=stored.sha256)


@pytest.mark.django_db
def test_versions_are_numbered_one_two_three_and_registered_as_candidates(tmp_path):
    versions = [registered_version(tmp_path) for _ in range(3)]
    assert [v.version for v in versions] == [1, 2, 3]
    assert {v.status for v in versions} == {ModelStatus.CANDIDATE}
    assert all(len(v.artifact_sha256) == 64 and v.artifact_size > 0 for v in versions)


@pytest.mark.django_db
def test_promote_flips_the_champion_and_writes_an_audit_row(tmp_path):
    v1, v2 = registered_version(tmp_path), registered_version(tmp_path)
    model_version_promote(version=1, actor="alice", reason="first")
    change = model_version_promote(version=2, actor="bob", reason="better ndcg")
    assert champion_version() == v2
    assert (change.from_version, change.to_version, change.actor, change.reason) == (v1, v2, "bob", "better ndcg")
    v1.refresh_from_db(), v2.refresh_from_db()
    assert (v1.status, v2.status) == (ModelStatus.RETIRED, ModelStatus.ACTIVE)


@pytest.mark.django_db
def test_rollback_returns_to_the_previous_champion_in_one_step(tmp_path):
    _v1, v2, v3 = (registered_version(tmp_path) for _ in range(3))
    for version in (1, 2, 3):
        model_version_promote(version=version, actor="ops")
    change = model_version_rollback(actor="ops", reason="v3 hurts CTR")
    assert champion_version() == v2
    assert (change.action, change.from_version, change.to_version) == ("rollback", v3, v2)


@pytest.mark.django_db
def test_rollback_can_name_any_earlier_version(tmp_path):
    v1 = registered_version(tmp_path)
    registered_version(tmp_path), registered_version(tmp_path)
    for version in (1, 2, 3):
        model_version_promote(version=version, actor="ops")
    model_version_rollback(actor="ops", version=1)
    assert champion_version() == v1


@pytest.mark.django_db
def test_rollback_without_an_earlier_champion_is_refused(tmp_path):
    registered_version(tmp_path)
    with pytest.raises(ApplicationError, match="no champion"):
        model_version_rollback(actor="ops")
    model_version_promote(version=1, actor="ops")
    with pytest.raises(ApplicationError, match="no earlier champion"):
        model_version_rollback(actor="ops")


@pytest.mark.django_db
def test_a_stale_expected_version_is_a_conflict_and_changes_nothing(tmp_path):
    registered_version(tmp_path), registered_version(tmp_path)
    model_version_promote(version=1, actor="ops")
    with pytest.raises(ConflictError):
        model_version_promote(version=2, actor="ops", expected_current=None)
    assert champion_version().version == 1
    assert DeploymentChange.objects.count() == 1


@pytest.mark.django_db
def test_a_failed_or_active_version_cannot_be_promoted(tmp_path):
    registered_version(tmp_path)
    model_version_promote(version=1, actor="ops")
    with pytest.raises(ApplicationError):
        model_version_promote(version=1, actor="ops")
    ModelVersion.objects.create(version=2, status=ModelStatus.FAILED)
    with pytest.raises(ApplicationError, match="failed"):
        model_version_promote(version=2, actor="ops")


@pytest.mark.django_db
def test_reject_marks_a_candidate_and_records_why(tmp_path):
    registered_version(tmp_path)
    change = model_version_reject(version=1, actor="gate", reason="ndcg below champion")
    assert ModelVersion.objects.get(version=1).status == ModelStatus.REJECTED
    assert (change.action, change.reason) == ("reject", "ndcg below champion")


@pytest.mark.django_db
def test_compare_puts_two_versions_side_by_side_with_which_is_better(tmp_path):
    a = registered_version(tmp_path, ndcg=0.10, rmse=0.90)
    b = registered_version(tmp_path, ndcg=0.12, rmse=0.95)
    rows = {row["metric"]: row for row in model_versions_compare(a=a, b=b)}
    assert rows["ndcg@10"]["better"] == "b" and rows["ndcg@10"]["relative_change"] == pytest.approx(0.2)
    assert rows["rmse"]["better"] == "a"
    assert rows["precision@10"]["better"] is None


@pytest.mark.django_db
def test_the_history_table_marks_the_active_version(tmp_path):
    registered_version(tmp_path, ndcg=0.1), registered_version(tmp_path, ndcg=0.1234)
    ModelVersion.objects.filter(version=2).update(
        baseline_metrics={"bias": {"rmse": 0.9321}, "global_mean": {"rmse": 1.0543}}
    )
    model_version_promote(version=2, actor="ops")
    table = model_history_markdown().splitlines()
    assert table[0] == (
        "| Version | Date | RMSE | RMSE bias baseline | RMSE global mean | MAE | R² | Recall@10 "
        "| MAP@10 | NDCG@10 | Candidate recall@100 | Status |"
    )
    assert table[2].startswith("| **v2** |") and "0.1234" in table[2] and "active" in table[2]
    assert "| 0.9000 | 0.9321 | 1.0543 | 0.7000 |" in table[2]  # the model's RMSE, then its rating baselines'
    assert "| 0.9000 | — | — | 0.7000 |" in table[3]  # a version from before the rating baselines
    assert table[3].startswith("| v1 |") and table[3].endswith("| candidate |")


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="races are tested on PostgreSQL")
def test_of_a_concurrent_promote_and_rollback_exactly_one_wins(tmp_path):
    for _ in range(3):
        registered_version(tmp_path)
    model_version_promote(version=1, actor="ops")
    model_version_promote(version=2, actor="ops")
    barrier = threading.Barrier(2)
    outcomes = []

    def run(action):
        try:
            barrier.wait()
            action()
            outcomes.append("won")
        except ConflictError:
            outcomes.append("conflict")
        finally:
            connections.close_all()

    for _ in range(5):
        current = champion_version().version
        promote_to, roll_back_to = [v for v in (1, 2, 3) if v != current]
        outcomes.clear()
        threads = [
            threading.Thread(
                target=run,
                args=(
                    lambda to=promote_to, seen=current: model_version_promote(
                        version=to, actor="a", expected_current=seen
                    ),
                ),
            ),
            threading.Thread(
                target=run,
                args=(
                    lambda to=roll_back_to, seen=current: model_version_rollback(
                        actor="b", version=to, expected_current=seen
                    ),
                ),
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["conflict", "won"]
        assert champion_version().version in (promote_to, roll_back_to)
    assert DeploymentChange.objects.count() == 2 + 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="races are tested on PostgreSQL")
def test_concurrent_registrations_get_distinct_consecutive_numbers(tmp_path):
    errors = []

    def register(n):
        try:
            registered_version(tmp_path, marker=f"t{n}")
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=register, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(ModelVersion.objects.values_list("version", flat=True)) == [1, 2, 3, 4, 5, 6]
    assert Deployment.objects.filter(alias=Alias.CHAMPION).count() == 0
