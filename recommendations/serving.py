"""Serving: the champion model held by each web process, hot-reloaded, and the recommendation logic.

Hot reload: a daemon thread per process polls the champion's version number (one indexed query) every
`MODEL_POLL_SECONDS` (default 1 s, so a new champion is noticed well within 5 s), loads the artifact,
verifies its sha256, warms it up with a prediction, then swaps one reference. A request reads that
reference once, so it is answered entirely by one version. A failed load logs, keeps the old model
serving, and is retried after `MODEL_RETRY_SECONDS`. If the thread is not running (tests, management
commands) the request path polls synchronously at the same interval.
"""

import logging
import math
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import F

from recommendations import features, ranking
from recommendations.clock import system_now
from recommendations.models import EndUser, Impression, Interaction, Item, ItemFeatures
from recommendations.services.features import user_state_from_row
from recommendations.services.impressions import impression_log
from recsite.errors import NotFoundError
from registry.artifacts import artifact_read
from registry.models import ModelVersion
from registry.selectors import champion_version_number

logger = logging.getLogger(__name__)


@dataclass
class ServingModel:
    version: int
    trained: ranking.TrainedModel
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def params(self) -> dict:
        return self.trained.manifest["params"]["training"]


def trained_model_of(version: ModelVersion) -> ranking.TrainedModel:
    """The model of a registered version, after its artifact's size and sha256 are verified."""
    files = artifact_read(path=version.artifact_path, size=version.artifact_size, sha256=version.artifact_sha256)
    with tempfile.TemporaryDirectory(prefix=f"model-v{version.version}-") as folder:
        for name, data in files.items():
            (Path(folder) / Path(name).name).write_bytes(data)
        return ranking.trained_model_load(folder)


def serving_model_load(version: ModelVersion) -> ServingModel:
    """Verify and load one version's artifact, and warm it up; raises on any problem."""
    trained = trained_model_of(version)
    warm = np.zeros((2, len(ranking.RANKER_FEATURES)), dtype=np.float32)
    ranking.ranker_scores(trained.ranker, warm)
    return ServingModel(version=version.version, trained=trained)


class ModelHolder:
    """The champion as this process serves it."""

    def __init__(self):
        self._current: ServingModel | None = None
        self._checked_at = float("-inf")
        self._failed: dict[int, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def current(self) -> ServingModel | None:
        if settings.MODEL_POLL_THREAD and (self._thread is None or not self._thread.is_alive()):
            self.refresh()  # the process's first request waits for the load rather than serve the fallback
            self.start_polling()
        elif self._thread is None or not self._thread.is_alive():
            if time.monotonic() - self._checked_at >= settings.MODEL_POLL_SECONDS:
                self.refresh()
        return self._current

    def refresh(self) -> None:
        """Load the champion if it changed. Never raises: a failed load keeps the old model."""
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                number = champion_version_number()
                if number is None:
                    self._current = None
                    return
                if self._current is not None and self._current.version == number:
                    return
                failed_at = self._failed.get(number)
                if failed_at is not None and time.monotonic() - failed_at < settings.MODEL_RETRY_SECONDS:
                    return
                self._current = serving_model_load(ModelVersion.objects.get(version=number))
                self._failed.pop(number, None)
                logger.info("serving model v%s", number)
            except Exception:
                if "number" in locals() and number is not None:
                    self._failed[number] = time.monotonic()
                logger.exception("could not load the champion; still serving %s", self._current and f"v{self._current.version}")

    def start_polling(self) -> None:
        """Poll in a daemon thread, one per process (started by the first request after a fork)."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._poll_forever, name="model-poller", daemon=True)
                self._thread.start()

    def _poll_forever(self) -> None:
        while True:
            self.refresh()
            close_old_connections()
            time.sleep(settings.MODEL_POLL_SECONDS)

    def forget(self) -> None:
        with self._lock:
            self._current, self._checked_at, self._failed = None, float("-inf"), {}


champion = ModelHolder()


@dataclass
class Recommendation:
    user_id: str
    model_version: int | None
    strategy: str
    recommendation_id: uuid.UUID
    items: list[dict]


def recommendations_for(*, user_external_id: str, k: int, category: str | None = None,
                        exclude: list[str] | None = None, explain: bool = False) -> Recommendation:
    """Top-k unseen, active items for the user from the champion, or the popular fallback for an unknown
    user or when there is no champion. Logs the impression."""
    model = champion.current()
    at = system_now()
    user = EndUser.objects.select_related("features").filter(external_id=user_external_id).first()
    excluded_pks = set(Item.objects.filter(external_id__in=exclude).values_list("pk", flat=True)) if exclude else set()
    seen = set(Interaction.objects.filter(user=user).values_list("item_id", flat=True).distinct()) if user else set()
    items, strategy = None, "popular"
    if model is not None and user is not None:
        items = _ranked(model, user, seen, excluded_pks, category, k, at.timestamp(), explain)
        strategy = "model"
    if items is None:
        items = _popular(seen | excluded_pks, category, k)
    recommendation = Recommendation(
        user_id=user_external_id,
        model_version=model.version if strategy == "model" else None,
        strategy=strategy,
        recommendation_id=uuid.uuid4(),
        items=items,
    )
    if user is not None:
        impression_log(Impression(recommendation_id=recommendation.recommendation_id, user=user,
                                  model_version=recommendation.model_version, strategy=strategy,
                                  items=[item["_pk"] for item in items],
                                  scores=[item["score"] for item in items] if strategy == "model" else [],
                                  served_at=at))
    for rank, item in enumerate(items, start=1):
        item.pop("_pk")
        item["rank"] = rank
    return recommendation


def _ranked(model: ServingModel, user: EndUser, seen: set[int], excluded: set[int], category: str | None,
            k: int, at: float, explain: bool) -> list[dict] | None:
    collaborative = model.trained.collaborative
    history = collaborative.codes_of(sorted(seen))
    found = ranking.candidates_generate(
        collaborative, histories=[history], n_collaborative=model.params["n_collaborative"],
        n_popular=model.params["n_popular"],
    )[0]
    pks = collaborative.item_pks[found.codes]
    rows = {pk: (external_id, categories, state) for pk, external_id, categories, *state in
            Item.objects.filter(pk__in=pks.tolist(), active=True).values_list("pk", "external_id", "categories", *_ITEM_STATE_FIELDS)}
    keep = np.array([pk in rows and pk not in seen and pk not in excluded
                     and (category is None or category in (rows[pk][1] or [])) for pk in pks.tolist()], dtype=bool)
    if not keep.any():
        return None
    found = ranking.Candidates(found.codes[keep], found.cf_score[keep], found.cf_rank[keep], found.source[keep])
    pks = pks[keep]
    row = getattr(user, "features", None)  # select_related: None when the user has no row yet
    user_state = user_state_from_row(row) if row else features.UserState()
    names: dict[str, int] = {}
    kept = [rows[pk] for pk in pks.tolist()]
    candidate_items = ranking.CandidateItems(
        columns=np.array([_item_state_row(state) for _, _, state in kept], dtype=np.float64).reshape(-1, len(_ITEM_STATE_FIELDS)),
        categories=features.category_matrix([categories or [] for _, categories, _ in kept], names), category_names=names,
    )
    matrix = ranking.ranker_feature_matrix(collaborative, candidates=found, user=user_state, items=candidate_items, at=at,
                                           category_share=model.trained.category_share)
    scores = ranking.ranker_scores(model.trained.ranker, matrix)
    order = np.lexsort((found.codes, -scores))[:k]
    explanations = ranking.ranker_explain(model.trained.ranker, matrix[order]) if explain else None
    items = []
    for position, index in enumerate(order.tolist()):
        pk = int(pks[index])
        item = {"_pk": pk, "item_id": rows[pk][0], "score": float(scores[index])}
        if explanations is not None:
            item["explanation"] = {
                "sources": _sources(int(found.source[index])),
                "top_features": [{"feature": name, "contribution": value} for name, value in explanations[position]],
            }
        items.append(item)
    return items


_ITEM_STATE_FIELDS = [f"features__{name}" for name in features.ITEM_STATE_COLUMNS]
_TIME_COLUMNS = {features.ITEM_STATE_COLUMNS.index(name) for name in ("first_event_at", "last_event_at")}
_EMPTY_ITEM_STATE = features.item_state_row(features.ItemState())


def _item_state_row(values: list) -> tuple[float, ...]:
    """An ItemFeatures row read through the Item (all None when the item has no row yet) as a row of
    ITEM_STATE_COLUMNS, without building model instances: what item_state_row(item_state_from_row(row)) gives."""
    if values[0] is None:
        return _EMPTY_ITEM_STATE
    return tuple(math.nan if v is None else v.timestamp() if i in _TIME_COLUMNS else float(v) for i, v in enumerate(values))


def _sources(flags: int) -> list[str]:
    return [name for bit, name in ((ranking.SOURCE_COLLABORATIVE, "collaborative"), (ranking.SOURCE_POPULAR, "popular")) if flags & bit]


def _popular(blocked: set[int], category: str | None, k: int) -> list[dict]:
    """Trending first: decayed 7-day popularity (its order does not depend on the clock), then all-time."""
    rows = ItemFeatures.objects.filter(item__active=True).exclude(item_id__in=blocked)
    if category and connection.features.supports_json_field_contains:
        rows = rows.filter(item__categories__contains=[category])
    rows = rows.order_by(F("log_pop_7d").desc(nulls_last=True), "-event_count", "item_id")
    now = system_now().timestamp()
    picked = []
    for pk, external_id, log_pop, categories in rows.values_list("item_id", "item__external_id", "log_pop_7d", "item__categories").iterator(chunk_size=200):
        if category and category not in (categories or []):
            continue
        picked.append({"_pk": pk, "item_id": external_id, "score": features.decayed_count(log_pop, now, 7.0)})
        if len(picked) == k:
            break
    return picked


def similar_items(*, item_external_id: str, k: int) -> tuple[int | None, str, list[dict]]:
    """Items most similar to this one by the champion's collaborative model; popular items of the same
    category when there is no model or the item is not modelled."""
    item = Item.objects.filter(external_id=item_external_id).first()
    if item is None:
        raise NotFoundError(f"Unknown item '{item_external_id}'.")
    model = champion.current()
    if model is not None:
        collaborative = model.trained.collaborative
        codes = collaborative.codes_of([item.pk])
        if len(codes):
            neighbours = collaborative.similar(int(codes[0]), k * 3)
            pks = collaborative.item_pks[neighbours].tolist()
            active = dict(Item.objects.filter(pk__in=pks, active=True).values_list("pk", "external_id"))
            weights = collaborative.weights[collaborative.position[codes[0]]]
            result = [{"item_id": active[pk], "score": float(weights[collaborative.position[code]])}
                      for pk, code in zip(pks, neighbours.tolist()) if pk in active][:k]
            return model.version, "collaborative", [{**r, "rank": n} for n, r in enumerate(result, 1)]
    category = (item.categories or [None])[0]
    popular = [{"item_id": p["item_id"], "score": p["score"], "rank": n} for n, p in enumerate(_popular({item.pk}, category, k), 1)]
    return None, "popular_in_category" if category else "popular", popular
