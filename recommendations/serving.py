"""Serving: the deployed models held by each web process — the champion and, during an experiment, the
challenger — hot-reloaded, and the recommendation logic.

Hot reload: a daemon thread per process polls both deployment pointers (one indexed query) every
`MODEL_POLL_SECONDS` (default 1 s, so a new champion is noticed well within 5 s), loads a new version's
artifact, verifies its sha256, warms it up with a prediction, then swaps one reference. A request reads that
reference once, so it is answered entirely by one version (recommendations.routing says which). A failed load logs, keeps the old model
serving, and is retried after `MODEL_RETRY_SECONDS`. If the thread is not running (tests, management
commands) the request path polls synchronously at the same interval.

Items come from the process's item snapshot (recommendations.item_snapshot), rebuilt by the same thread
every `ITEM_SNAPSHOT_SECONDS`: item features may be that many seconds (plus a poll) stale; the user's
features and history are read by every request, so the user's own events count in the very next one;
and an inactive item is never served: the active flags of the items about to be returned are re-read,
unless the catalogue's deactivation count, read in the same statement as the user, shows that no item was
deactivated since the snapshot was built (recommendations.item_snapshot).
"""

import logging
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from django.conf import settings
from django.db import close_old_connections

from recommendations import features, ranking
from recommendations.clock import system_now
from recommendations.item_snapshot import ItemSnapshot, item_snapshot_build
from recommendations.models import Impression, Item
from recommendations.routing import Route, route_for
from recommendations.selectors import ServedUser, inactive_items, served_user
from recommendations.services.impressions import impression_log
from recommendations.shadow import shadow_checkpoint, shadow_submit
from recsite.errors import NotFoundError
from registry.artifacts import ArtifactError, artifact_read
from registry.models import ModelVersion
from registry.selectors import ServingPointers, serving_pointers
from registry.services import model_version_compiled_record

logger = logging.getLogger(__name__)


@dataclass
class ServingModel:
    version: int
    trained: ranking.TrainedModel
    scores: Callable[[np.ndarray], np.ndarray]  # the ranker's scores of a feature matrix
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def params(self) -> dict:
        return self.trained.manifest["params"]["training"]


def trained_model_of(version: ModelVersion) -> ranking.TrainedModel:
    """The model of a registered version, after its artifact's size and sha256 are verified."""
    with _artifact_unpacked(version) as folder:
        return ranking.trained_model_load(folder)


@contextmanager
def _artifact_unpacked(version: ModelVersion):
    files = artifact_read(path=version.artifact_path, size=version.artifact_size, sha256=version.artifact_sha256)
    with _files_unpacked(files, prefix=f"model-v{version.version}-") as folder:
        yield folder


@contextmanager
def _files_unpacked(files: dict[str, bytes], *, prefix: str):
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        for name, data in files.items():
            (Path(folder) / Path(name).name).write_bytes(data)
        yield Path(folder)


def artifact_models_check(*, files: dict[str, bytes]) -> None:
    """The registry's check that an artifact's models load (settings.REGISTRY_ARTIFACT_VERIFIER): the
    ranker, the rating regressor and the collaborative model, as serving loads them. Raises if one does not."""
    with _files_unpacked(files, prefix="model-check-") as folder:
        trained = ranking.trained_model_load(folder)
    if trained.regressor is None:
        raise ValueError(f"the rating regressor ({ranking.REGRESSOR_FILE}) is missing")


def ranker_cache_dir() -> Path:
    """Where compiled rankers are kept (recommendations.ranking.CompiledRanker)."""
    return Path(settings.MODEL_STORE) / "compiled"


def ranker_precompile(model_dir: Path) -> dict[str, str]:
    """Compile a newly registered model's ranker into the cache, so that web processes load it in
    milliseconds when it is deployed instead of compiling it under traffic; returns the checksums to register
    with the version ({compilation key: sha256}), which web processes trust. Best effort: a failure is
    logged (and no checksum returned), and serving then compiles it (or falls back to LightGBM) itself."""
    if not settings.RANKER_COMPILED:
        return {}
    try:
        compiled = ranking.CompiledRanker(Path(model_dir) / ranking.RANKER_FILE, cache_dir=ranker_cache_dir())
    except Exception:
        logger.exception("could not compile the ranker of %s ahead of serving", model_dir)
        return {}
    return {compiled.key: compiled.sha256}


def serving_model_load(version: ModelVersion) -> ServingModel:
    """Verify and load one version's artifact, compile its ranker (RANKER_COMPILED; LightGBM's own
    predictor if that fails), and warm it up; raises on any other problem."""
    with _artifact_unpacked(version) as folder:
        trained = ranking.trained_model_load(folder)
        scores = partial(ranking.ranker_scores, trained.ranker)
        if settings.RANKER_COMPILED:
            try:
                scores = _compiled_ranker(version, folder / ranking.RANKER_FILE).scores
            except Exception:
                logger.exception("could not compile v%s's ranker; scoring with LightGBM's predictor", version.version)
    scores(np.zeros((2, len(ranking.RANKER_FEATURES)), dtype=np.float32))
    return ServingModel(version=version.version, trained=trained, scores=scores)


def _compiled_ranker(version: ModelVersion, model_file: Path) -> ranking.CompiledRanker:
    """The compiled ranker, from the cache only if it has the digest the registry recorded; compiled here
    from the verified artifact otherwise, which is a trusted compile whose digest is recorded if none was."""
    key = ranking.compiled_ranker_key(model_file)
    trusted = version.compiled_checksums.get(key)
    compiled = ranking.CompiledRanker(model_file, cache_dir=ranker_cache_dir(), trusted_sha256=trusted)
    if trusted is None:
        model_version_compiled_record(version=version.version, key=key, sha256=compiled.sha256)
    return compiled


@dataclass(frozen=True)
class Deployed:
    """What this process serves, read once by a request: the pointers and the models they name. The
    champion pointer is the version actually loaded (a champion that failed to load leaves the previous one
    here); a challenger that failed to load stays in the pointers without a model, so the requests routed to
    it are answered by the champion and counted as errors."""

    pointers: ServingPointers = ServingPointers()
    models: dict = field(default_factory=dict)

    @property
    def champion(self) -> ServingModel | None:
        return self.models.get(self.pointers.champion)


@dataclass(frozen=True)
class ServingHealth:
    """Whether this process serves the champion the pointer names: the version it serves, the one it should,
    and a short reason fit for unauthenticated callers when they differ (the details are in the log)."""

    serving: int | None
    expected: int | None
    error: str = ""

    @property
    def degraded(self) -> bool:
        return self.serving != self.expected


class ModelHolder:
    """The champion and, during an experiment, the challenger, as this process serves them."""

    def __init__(self):
        self._current = Deployed()
        self._expected: int | None = None
        self._checked_at = float("-inf")
        self._failed: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def current(self) -> Deployed:
        return self._current

    def health(self) -> ServingHealth:
        serving, expected = self._current.pointers.champion, self._expected
        if serving == expected:
            return ServingHealth(serving, expected)
        failed = self._failed.get(expected)
        return ServingHealth(serving, expected, failed[1] if failed else f"v{expected} is not loaded yet")

    def refresh_if_due(self) -> None:
        if time.monotonic() - self._checked_at >= settings.MODEL_POLL_SECONDS:
            self.refresh()

    def refresh(self) -> None:
        """Load what the pointers name if it changed. Never raises: a failed load keeps the old champion."""
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                pointers = serving_pointers()
            except Exception:
                logger.exception("could not read the deployment pointers; serving as before")
                return
            self._expected = pointers.champion
            previous = self._current
            loaded = dict(previous.models)
            for number in {pointers.champion, pointers.challenger} - {None} - set(loaded):
                model = self._load(number)
                if model is not None:
                    loaded[number] = model
            champion = pointers.champion
            if champion is not None and champion not in loaded:
                champion = previous.pointers.champion  # the new one failed to load: keep serving the old one
            pointers = replace(pointers, champion=champion)
            self._current = Deployed(pointers, {v: m for v, m in loaded.items() if v in (champion, pointers.challenger)})

    def _load(self, number: int) -> ServingModel | None:
        failed = self._failed.get(number)
        if failed is not None and time.monotonic() - failed[0] < settings.MODEL_RETRY_SECONDS:
            return None
        try:
            model = serving_model_load(ModelVersion.objects.get(version=number))
        except Exception as exc:
            kind = "its artifact fails verification" if isinstance(exc, ArtifactError) else "its models do not load"
            self._failed[number] = (time.monotonic(), f"v{number} could not be loaded: {kind}")
            logger.exception("could not load v%s; serving %s", number, self._current.pointers)
            return None
        self._failed.pop(number, None)
        logger.info("loaded v%s", number)
        return model

    def forget(self) -> None:
        with self._lock:
            self._current, self._expected, self._checked_at, self._failed = Deployed(), None, float("-inf"), {}


class ItemSnapshotHolder:
    """The item snapshot (recommendations.item_snapshot) this process serves from."""

    def __init__(self):
        self._current: ItemSnapshot | None = None
        self._lock = threading.Lock()

    def current(self) -> ItemSnapshot:
        """The snapshot, built on the spot if there is none yet (that may raise, as any query may)."""
        if self._current is None:
            self.refresh(keep_going=False)
        return self._current

    def refresh_if_due(self) -> None:
        if self._current is None or time.monotonic() - self._current.built_at >= settings.ITEM_SNAPSHOT_SECONDS:
            self.refresh()

    def refresh(self, *, keep_going: bool = True) -> None:
        """Rebuild the snapshot. A failure keeps the old one (and is raised only with keep_going=False)."""
        with self._lock:
            try:
                self._current = item_snapshot_build()
            except Exception:
                if not keep_going:
                    raise
                logger.exception("could not rebuild the item snapshot; still serving the previous one")


class Poller:
    """One daemon thread per process (started by the first request after a fork) that refreshes what the
    process serves from every MODEL_POLL_SECONDS. Without it (MODEL_POLL_THREAD off: tests, management
    commands) the request path refreshes whatever is due."""

    def __init__(self, *holders):
        self._holders = holders
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure_fresh(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._refresh_due()  # the process's first request waits for the load rather than serve the fallback
        if settings.MODEL_POLL_THREAD:
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._poll_forever, name="serving-poller", daemon=True)
                    self._thread.start()

    def _refresh_due(self) -> None:
        for holder in self._holders:
            holder.refresh_if_due()

    def _poll_forever(self) -> None:
        while True:
            self._refresh_due()
            close_old_connections()
            time.sleep(settings.MODEL_POLL_SECONDS)


deployed = ModelHolder()
items = ItemSnapshotHolder()
poller = Poller(deployed, items)


def serving_health() -> ServingHealth:
    """Whether this process serves the champion the pointer names, after loading what is due (a fresh
    process's first health check loads the champion, as its first request would)."""
    poller.ensure_fresh()
    return deployed.health()


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
    def recheck_active(self) -> bool:
        """Whether the served items' active flags must be re-read: unless the catalogue's deactivation
        count read with the user is the snapshot's (then nothing the snapshot holds active was deactivated)."""
        counted = self.user.catalog_deactivations if self.user else None
        return counted is None or counted != self.snapshot.deactivations


def recommendations_for(*, user_external_id: str, k: int, category: str | None = None,
                        exclude: list[str] | None = None, explain: bool = False) -> Recommendation:
    """Top-k unseen, active items for the user from the version the user is routed to (the champion, or
    the challenger for a user in its A/B or canary arm), or the popular fallback for an unknown user or
    when there is no champion. A challenger that fails is replaced by the champion for that request (and
    the impression says so). In shadow mode the challenger also scores the request after the response.
    Logs the impression."""
    poller.ensure_fresh()
    current, snapshot = deployed.current(), items.current()
    user = served_user(external_id=user_external_id)
    excluded = {snapshot.pk_of_external_id[i] for i in exclude if i in snapshot.pk_of_external_id} if exclude else set()
    request = _Request(snapshot=snapshot, user=user, excluded=excluded, category=category, k=k, at=system_now())
    route = route_for(user_external_id, current.pointers)
    served, model, failed = _answer(current, route, request, explain)
    recommendation = Recommendation(
        user_id=user_external_id, model_version=model.version if model else None,
        strategy="model" if model else "popular", recommendation_id=uuid.uuid4(), items=served,
    )
    if user is not None:
        experiment_id = current.pointers.experiment_id
        impression_log(_impression(recommendation.recommendation_id, request, served, model, arm=route.arm,
                                   routed_version=route.version, experiment_id=experiment_id,
                                   strategy=Impression.Strategy.ERROR if failed else recommendation.strategy))
        shadow = current.models.get(route.shadow_version)
        if shadow is not None:
            shadow_submit(partial(_shadow_score, shadow, request, recommendation.recommendation_id, experiment_id))
    for rank, item in enumerate(served, start=1):
        item.pop("_pk")
        item["rank"] = rank
    return recommendation


def _answer(current: Deployed, route: Route, request: _Request, explain: bool) -> tuple[list[dict], ServingModel | None, bool]:
    """The served items, the model that ranked them (None for the popular fallback), and whether the
    routed model failed."""
    model, failed = current.models.get(route.version), False
    if route.arm == Impression.Arm.CHALLENGER:
        try:
            if model is None:
                raise LookupError(f"v{route.version} is not loaded in this process")
            return _ranked_or_popular(model, request, explain) + (False,)
        except Exception:
            logger.exception("the challenger v%s failed; the champion answers", route.version)
            model, failed = current.champion, True
    return _ranked_or_popular(model, request, explain) + (failed,)


def _ranked_or_popular(model: ServingModel | None, request: _Request, explain: bool) -> tuple[list[dict], ServingModel | None]:
    user = request.user
    if model is not None and user is not None:
        served = _ranked(model=model, snapshot=request.snapshot, user=user.state, seen=user.seen, excluded=request.excluded,
                         category=request.category, k=request.k, at=request.at.timestamp(), explain=explain,
                         recheck_active=request.recheck_active)
        if served is not None:
            return served, model
    blocked = (user.seen if user else set()) | request.excluded
    return _popular(snapshot=request.snapshot, blocked=blocked, category=request.category, k=request.k,
                    recheck_active=request.recheck_active), None


def _impression(recommendation_id: uuid.UUID, request: _Request, served: list[dict], model: ServingModel | None,
                **fields) -> Impression:
    return Impression(recommendation_id=recommendation_id, user_id=request.user.pk, served_at=request.at,
                      model_version=model.version if model else None, items=[item["_pk"] for item in served],
                      scores=[item["score"] for item in served] if model else [], **fields)


def _shadow_score(model: ServingModel, request: _Request, shadow_of: uuid.UUID, experiment_id: int | None) -> None:
    """The challenger's list for a request the champion answered, logged as a shadow impression only."""
    user = request.user
    served = _ranked(model=model, snapshot=request.snapshot, user=user.state, seen=user.seen, excluded=request.excluded,
                     category=request.category, k=request.k, at=request.at.timestamp(), explain=False,
                     recheck_active=request.recheck_active, checkpoint=shadow_checkpoint)
    if served:
        impression_log(_impression(uuid.uuid4(), request, served, model, arm=Impression.Arm.SHADOW,
                                   routed_version=model.version, experiment_id=experiment_id, shadow_of=shadow_of,
                                   strategy=Impression.Strategy.MODEL))


def _ranked(*, model: ServingModel, snapshot: ItemSnapshot, user: features.UserState, seen: set[int],
            excluded: set[int], category: str | None, k: int, at: float, explain: bool, recheck_active: bool,
            checkpoint: Callable[[], None] = lambda: None) -> list[dict] | None:
    """The champion's top k of its candidates for the user that the snapshot holds as active (and in
    `category`), neither seen nor excluded; None when no candidate is left. `checkpoint` is called between
    the stages (a shadow job uses it to give way to a live request)."""
    collaborative = model.trained.collaborative
    found = ranking.candidates_generate(
        collaborative, histories=[collaborative.codes_of(np.fromiter(seen, dtype=np.int64, count=len(seen)))],
        n_collaborative=model.params["n_collaborative"], n_popular=model.params["n_popular"],
    )[0]
    checkpoint()
    pks = collaborative.item_pks[found.codes]
    rows = snapshot.rows_of(pks)
    keep = snapshot.servable(rows, category=category) & ~np.isin(pks, list(excluded))
    if not keep.any():
        return None
    found = ranking.Candidates(found.codes[keep], found.cf_score[keep], found.cf_rank[keep], found.source[keep])
    pks, rows = pks[keep], rows[keep]
    candidate_items = ranking.CandidateItems(columns=snapshot.columns[rows], categories=snapshot.categories[rows],
                                             category_names=snapshot.category_names)
    matrix = ranking.ranker_feature_matrix(collaborative, candidates=found, user=user, at=at, items=candidate_items,
                                           category_share=model.trained.category_share)
    checkpoint()
    scores = model.scores(matrix)
    checkpoint()
    order = np.lexsort((found.codes, -scores))
    order = order[_first_active(pks[order], k, recheck=recheck_active)]
    explanations = ranking.ranker_explain(model.trained.ranker, matrix[order]) if explain else None
    served = []
    for position, index in enumerate(order.tolist()):
        item = {"_pk": int(pks[index]), "item_id": snapshot.external_ids[rows[index]], "score": float(scores[index])}
        if explanations is not None:
            item["explanation"] = {
                "sources": _sources(int(found.source[index])),
                "top_features": [{"feature": name, "contribution": value} for name, value in explanations[position]],
            }
        served.append(item)
    return served


def _first_active(pks: np.ndarray, k: int, *, recheck: bool) -> list[int]:
    """Positions of the first k of these items (all active in the snapshot) that are active now. Without
    `recheck` (nothing deactivated since the snapshot) those are the first k. Otherwise the snapshot's flags
    may be stale, so the flags of the items about to be served are read again: one query of k keys, and one
    more for the shortfall each time some of them turn out inactive."""
    if not recheck:
        return list(range(min(k, len(pks))))
    chosen: list[int] = []
    start = 0
    while len(chosen) < k and start < len(pks):
        stop = start + k - len(chosen)
        window = pks[start:stop].tolist()
        inactive = inactive_items(pks=window)
        chosen += [start + offset for offset, pk in enumerate(window) if pk not in inactive]
        start = stop
    return chosen


def _sources(flags: int) -> list[str]:
    return [name for bit, name in ((ranking.SOURCE_COLLABORATIVE, "collaborative"), (ranking.SOURCE_POPULAR, "popular")) if flags & bit]


def _popular(*, snapshot: ItemSnapshot, blocked: set[int], category: str | None, k: int,
             recheck_active: bool = True) -> list[dict]:
    """Trending first: decayed 7-day distinct users (its order does not depend on the clock), then all-time."""
    rows = snapshot.trending[~np.isin(snapshot.pks[snapshot.trending], list(blocked))]
    if category:
        rows = rows[snapshot.in_category(rows, category)]
    rows = rows[_first_active(snapshot.pks[rows], k, recheck=recheck_active)]
    now = system_now().timestamp()
    return [{"_pk": int(snapshot.pks[row]), "item_id": snapshot.external_ids[row],
             "score": snapshot.trend_score(row, now)} for row in rows.tolist()]


def similar_items(*, item_external_id: str, k: int) -> tuple[int | None, str, list[dict]]:
    """Items most similar to this one by the champion's collaborative model; popular items of the same
    category when there is no model or the item is not modelled."""
    item = Item.objects.filter(external_id=item_external_id).first()
    if item is None:
        raise NotFoundError(f"Unknown item '{item_external_id}'.")
    poller.ensure_fresh()
    model = deployed.current().champion
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
    popular = _popular(snapshot=items.current(), blocked={item.pk}, category=category, k=k)
    ranked = [{"item_id": p["item_id"], "score": p["score"], "rank": n} for n, p in enumerate(popular, 1)]
    return None, "popular_in_category" if category else "popular", ranked
