"""Retention of the event log as the active policy asks (recommendations.services.partitions does the work)."""

from dataclasses import asdict

from recommendations.clock import system_now
from recommendations.services.partitions import event_partitions_maintain
from retraining.services.policy import policy_active


def event_partitions_apply() -> dict:
    """On beat: the months ahead partitioned and the policy's retention applied, by the clock that training
    cut-offs follow (so a replay keeps what its training windows read)."""
    report = event_partitions_maintain(now=system_now(), retention_days=policy_active().event_retention_days)
    return asdict(report)
