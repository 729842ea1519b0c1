"""One champion, always: concurrent promotions, rollbacks and gate decisions on PostgreSQL leave exactly one
winner, an audit trail whose `from_version` is the true previous champion, and at most one active version —
the last enforced by the database itself."""

import itertools
import random
import threading
from functools import partial

import pytest
from django.db import IntegrityError, connection, transaction

from recsite.errors import ConflictError
from registry.models import Deployment, DeploymentChange, ModelStatus, ModelVersion
from registry.services import model_version_promote, model_version_rollback
from retraining.services.policy import policy_active
from retraining.services.rollout import candidate_deploy
from tests.registry.factories import registered_version

ROUNDS = 60
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="real concurrency needs PostgreSQL"),
]


@pytest.fixture
def versions(tmp_path):
    numbers = [registered_version(tmp_path, marker=f"v{n}").version for n in range(1, 5)]
    model_version_promote(version=numbers[0], actor="test")
    return numbers


def _champion() -> int:
    return Deployment.objects.get(alias="champion").version.version


def _flips(current: int, first: int, second: int, round_number: int) -> list:
    """Two changes that both start from `current` (or from no champion): an operator's promote with
    expected_current given, raced by one of the other kinds of flip, in turn: a promote with expected_current
    null, a rollback, the gate's promotion (retraining), another promote with expected_current given."""
    others = [
        partial(model_version_promote, version=second, actor="op", expected_current=None),
        partial(model_version_rollback, version=second, actor="op", expected_current=current),
        partial(candidate_deploy, version=second, champion=current, reason="gate", policy=policy_active()),
        partial(model_version_promote, version=second, actor="op", expected_current=current),
    ]
    return [
        partial(model_version_promote, version=first, actor="op", expected_current=current),
        others[round_number % len(others)],
    ]


def _race(calls: list) -> list:
    """Run the calls at once (threads behind a barrier); each outcome is "won" or the exception raised."""
    barrier, outcomes = threading.Barrier(len(calls)), [None] * len(calls)

    def run(index, call):
        try:
            barrier.wait()
            call()
            outcomes[index] = "won"
        except Exception as exc:
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def _assert_one_champion(previous: int) -> DeploymentChange:
    champion = _champion()
    assert list(ModelVersion.objects.filter(status=ModelStatus.ACTIVE).values_list("version", flat=True)) == [champion]
    change = DeploymentChange.objects.filter(alias="champion", action__in=["promote", "rollback"]).first()
    assert (change.from_version.version, change.to_version.version) == (previous, champion)
    return change


def test_of_two_concurrent_flips_from_one_champion_exactly_one_wins_and_the_audit_names_the_true_predecessor(versions):
    rng = random.Random(7)
    for round_number in range(ROUNDS):
        current = _champion()
        first, second = rng.sample([v for v in versions if v != current], 2)
        changes_before = DeploymentChange.objects.filter(action__in=["promote", "rollback"]).count()
        outcomes = _race(_flips(current, first, second, round_number))
        assert outcomes.count("won") == 1, (round_number, outcomes)
        loser = next(o for o in outcomes if o != "won")
        assert isinstance(loser, ConflictError) and loser.status_code == 409, (round_number, loser)
        assert loser.extra.get("current_version") in (current, first, second), (round_number, loser.message)
        assert DeploymentChange.objects.filter(action__in=["promote", "rollback"]).count() == changes_before + 1
        _assert_one_champion(current)


def test_concurrent_promotes_that_read_the_champion_themselves_chain_their_audit_rows(versions):
    """Without expected_current each reads the champion when it starts: both may win one after the other,
    but each audit row starts where the previous one ended and one version is active."""
    rng = random.Random(11)
    for _round_number in range(ROUNDS):
        current = _champion()
        first, second = rng.sample([v for v in versions if v != current], 2)
        outcomes = _race([partial(model_version_promote, version=t, actor="op") for t in (first, second)])
        won = outcomes.count("won")
        assert won in (1, 2) and all(o == "won" or isinstance(o, ConflictError) for o in outcomes), outcomes
        rows = list(DeploymentChange.objects.filter(action="promote").order_by("-id")[:won])[::-1]
        assert rows[0].from_version.version == current
        assert all(later.from_version_id == earlier.to_version_id for earlier, later in itertools.pairwise(rows))
        assert rows[-1].to_version.version == _champion()
        assert ModelVersion.objects.filter(status=ModelStatus.ACTIVE).count() == 1


def test_the_database_refuses_a_second_active_version(versions):
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(version=versions[1]).update(status=ModelStatus.ACTIVE)
    assert ModelVersion.objects.filter(status=ModelStatus.ACTIVE).count() == 1
