"""Which model answers a request: the champion, or the challenger for the users in its arm.

A user's arm is a pure function of the user id and the experiment id (a SHA-256 bucket in 0..9999), so every
web process puts a user in the same arm, a user keeps the arm for the whole experiment, and a canary that
raises its share only adds users (the bucket is compared with a rising threshold). A new experiment draws a
new, independent split."""

import hashlib
from dataclasses import dataclass

from registry.models import DeploymentMode
from registry.selectors import ServingPointers

BUCKETS = 10_000


def bucket_of(user_external_id: str, experiment_id: int) -> int:
    digest = hashlib.sha256(f"{experiment_id}:{user_external_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Route:
    arm: str  # champion | challenger
    version: int | None  # the version the request is routed to
    shadow_version: int | None = None  # the challenger that also scores it in shadow, if any


def route_for(user_external_id: str, pointers: ServingPointers) -> Route:
    if pointers.challenger is None or pointers.experiment_id is None:
        return Route("champion", pointers.champion)
    in_share = bucket_of(user_external_id, pointers.experiment_id) < pointers.traffic_percent * BUCKETS // 100
    if pointers.mode in (DeploymentMode.AB, DeploymentMode.CANARY) and in_share:
        return Route("challenger", pointers.challenger)
    if pointers.mode == DeploymentMode.SHADOW and in_share:
        return Route("champion", pointers.champion, shadow_version=pointers.challenger)
    return Route("champion", pointers.champion)
