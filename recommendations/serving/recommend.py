"""A recommendation request's orchestration: which model answers (recommendations.routing), the popular
fallback, the impression, and the challenger's shadow list, around the pure ranking pipeline
(recommendations.serving.pipeline). What the process serves from comes from its runtime
(recommendations.runtime): the models and item snapshot (recommendations.serving.holders), the impression
buffer and the shadow scorer.

Items come from the process's item snapshot, rebuilt every `ITEM_SNAPSHOT_SECONDS`: item features may be that
many seconds (plus a poll) stale; the user's features and history are read by every request, so the user's own
events count in the very next one; and an inactive item is never served: the active flags of the items about to
be returned are re-read, unless the catalogue's deactivation count, read in the same statement as the user,
shows that no item was deactivated since the snapshot was built (recommendations.item_snapshot)."""

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from recommendations.item_snapshot import ItemSnapshot
from recommendations.models import Impression, Item
from recommendations.routing import Route, route_for
from recommendations.runtime import ServingRuntime
from recommendations.selectors import ServedUser, inactive_items, served_user
from recommendations.services.impressions import ImpressionRow
from recommendations.serving.holders import Deployed, ServingHealth
from recommendations.serving.loading import ServingModel
from recommendations.serving.pipeline import InactiveOf, popular_items, ranked_items
from recsite import metrics
from recsite.errors import NotFoundError

logger = logging.getLogger(__name__)


def serving_health(*, runtime: ServingRuntime) -> ServingHealth:
    """Whether this process serves the champion the pointer names, after loading what is due (a fresh
    process's first health check loads the champion, as its first request would)."""
    runtime.poller.ensure_fresh()
    return runtime.models.health()


@dataclass
class Recommendation:
    user_id: str
    model_version: int | None
    strategy: str
    recommendation_id: uuid.UUID
    items: list[dict]


@dataclass(frozen=True)
class _Request:
    snapshot: ItemSnapshot
    user: ServedUser | None
    excluded: set[int]
    category: str | None
    k: int
    at: datetime

    @property
    def inactive_of(self) -> InactiveOf | None:
        """How the served items' active flags are re-read, or None when they need not be: when the catalogue's
        deactivation count read with the user is the snapshot's (nothing the snapshot holds active was
        deactivated since)."""
        counted = self.user.catalog_deactivations if self.user else None
        return _inactive_now if counted is None or counted != self.snapshot.deactivations else None


def _inactive_now(pks: list[int]) -> set[int]:
    return inactive_items(pks=pks)


def recommendations_for(
    *,
    runtime: ServingRuntime,
    user_external_id: str,
    k: int,
    category: str | None = None,
    exclude: list[str] | None = None,
    explain: bool = False,
) -> Recommendation:
    """Top-k unseen, active items for the user from the version the user is routed to (the champion, or
    the challenger for a user in its A/B or canary arm), or the popular fallback for an unknown user or
    when there is no champion. A challenger that fails is replaced by the champion for that request (and
    the impression says so). In shadow mode the challenger also scores the request after the response.
    Logs the impression."""
    runtime.poller.ensure_fresh()
    current, snapshot = runtime.models.current(), runtime.items.current()
    user = served_user(external_id=user_external_id)
    ids = snapshot.pk_of_external_id
    excluded = {ids[i] for i in exclude if i in ids} if exclude else set()
    request = _Request(snapshot=snapshot, user=user, excluded=excluded, category=category, k=k, at=runtime.clock.now())
    route = route_for(user_external_id, current.pointers)
    served, model, failed = _answer(current, route, request, explain)
    recommendation = Recommendation(
        user_id=user_external_id,
        model_version=model.version if model else None,
        strategy="model" if model else "popular",
        recommendation_id=uuid.uuid4(),
        items=served,
    )
    metrics.recommendation_count(
        version=recommendation.model_version,
        arm=route.arm,
        strategy=recommendation.strategy,
        fallback=_fallback_reason(current.models.get(route.version), user, model, failed),
    )
    if user is not None:
        experiment_id = current.pointers.experiment_id
        runtime.impressions.log(
            _impression(
                recommendation.recommendation_id,
                request,
                served,
                model,
                arm=route.arm,
                routed_version=route.version,
                experiment_id=experiment_id,
                strategy=Impression.Strategy.ERROR if failed else recommendation.strategy,
            )
        )
        shadow = current.models.get(route.shadow_version)
        if shadow is not None:
            runtime.shadow.submit(
                partial(_shadow_score, runtime, shadow, request, recommendation.recommendation_id, experiment_id)
            )
    for rank, item in enumerate(served, start=1):
        item.pop("_pk")
        item["rank"] = rank
    return recommendation


def _answer(
    current: Deployed, route: Route, request: _Request, explain: bool
) -> tuple[list[dict], ServingModel | None, bool]:
    """The served items, the model that ranked them (None for the popular fallback), and whether the
    routed model failed."""
    model, failed = current.models.get(route.version), False
    if route.arm == Impression.Arm.CHALLENGER:
        try:
            if model is None:
                raise LookupError(f"v{route.version} is not loaded in this process")
            return (*_ranked_or_popular(model, request, explain), False)
        except Exception:
            logger.exception("the challenger v%s failed; the champion answers", route.version)
            model, failed = current.champion, True
    return (*_ranked_or_popular(model, request, explain), failed)


def _fallback_reason(
    routed: ServingModel | None, user: ServedUser | None, model: ServingModel | None, failed: bool
) -> str | None:
    """Why the routed model did not rank the list (None: it did)."""
    if failed:
        return "challenger_failed"
    if model is not None:
        return None
    if user is None:
        return "unknown_user"
    return "no_model" if routed is None else "nothing_ranked"


def _ranked_or_popular(
    model: ServingModel | None, request: _Request, explain: bool
) -> tuple[list[dict], ServingModel | None]:
    user = request.user
    if model is not None and user is not None:
        served = _ranked(model, request, kind="live", explain=explain)
        if served is not None:
            return served, model
    blocked = (user.seen if user else set()) | request.excluded
    return popular_items(
        snapshot=request.snapshot,
        blocked=blocked,
        category=request.category,
        k=request.k,
        at=request.at.timestamp(),
        inactive_of=request.inactive_of,
    ), None


def _ranked(model: ServingModel, request: _Request, *, kind: str, **options) -> list[dict] | None:
    user, started = request.user, time.perf_counter()
    served = ranked_items(
        model=model,
        snapshot=request.snapshot,
        user=user.state,
        seen=user.seen,
        excluded=request.excluded,
        category=request.category,
        k=request.k,
        at=request.at.timestamp(),
        inactive_of=request.inactive_of,
        **options,
    )
    metrics.SCORING_DURATION.labels(kind).observe(time.perf_counter() - started)
    return served


def _impression(
    recommendation_id: uuid.UUID,
    request: _Request,
    served: list[dict],
    model: ServingModel | None,
    *,
    arm: str,
    routed_version: int | None,
    experiment_id: int | None,
    strategy: str,
    shadow_of: uuid.UUID | None = None,
) -> ImpressionRow:
    return ImpressionRow(
        recommendation_id=recommendation_id,
        user_id=request.user.pk,
        served_at=request.at,
        model_version=model.version if model else None,
        routed_version=routed_version,
        strategy=strategy,
        arm=arm,
        experiment_id=experiment_id,
        shadow_of=shadow_of,
        items=[item["_pk"] for item in served],
        scores=[item["score"] for item in served] if model else [],
    )


def _shadow_score(
    runtime: ServingRuntime, model: ServingModel, request: _Request, shadow_of: uuid.UUID, experiment_id: int | None
) -> None:
    """The challenger's list for a request the champion answered, logged as a shadow impression only."""
    served = _ranked(model, request, kind="shadow", explain=False, checkpoint=runtime.shadow.checkpoint)
    if served:
        runtime.impressions.log(
            _impression(
                uuid.uuid4(),
                request,
                served,
                model,
                arm=Impression.Arm.SHADOW,
                routed_version=model.version,
                experiment_id=experiment_id,
                shadow_of=shadow_of,
                strategy=Impression.Strategy.MODEL,
            )
        )


def similar_items(*, runtime: ServingRuntime, item_external_id: str, k: int) -> tuple[int | None, str, list[dict]]:
    """Items most similar to this one by the champion's collaborative model; popular items of the same
    category when there is no model or the item is not modelled."""
    item = Item.objects.filter(external_id=item_external_id).first()
    if item is None:
        raise NotFoundError(f"Unknown item '{item_external_id}'.")
    runtime.poller.ensure_fresh()
    model = runtime.models.current().champion
    if model is not None:
        collaborative = model.trained.collaborative
        codes = collaborative.codes_of([item.pk])
        if len(codes):
            neighbours = collaborative.similar(int(codes[0]), k * 3)
            pks = collaborative.item_pks[neighbours].tolist()
            active = dict(Item.objects.filter(pk__in=pks, active=True).values_list("pk", "external_id"))
            weights = collaborative.weights[collaborative.position[codes[0]]]
            result = [
                {"item_id": active[pk], "score": float(weights[collaborative.position[code]])}
                for pk, code in zip(pks, neighbours.tolist())
                if pk in active
            ][:k]
            return model.version, "collaborative", [{**r, "rank": n} for n, r in enumerate(result, 1)]
    category = (item.categories or [None])[0]
    popular = popular_items(
        snapshot=runtime.items.current(),
        blocked={item.pk},
        category=category,
        k=k,
        at=runtime.clock.now().timestamp(),
        inactive_of=_inactive_now,
    )
    ranked = [{"item_id": p["item_id"], "score": p["score"], "rank": n} for n, p in enumerate(popular, 1)]
    return None, "popular_in_category" if category else "popular", ranked
