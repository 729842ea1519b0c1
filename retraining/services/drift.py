"""Drift detection: the event stream of a recent window against the reference profile that the
champion's manifest carries (computed by the same function over the window before its training cut-off).

A profile is built from database aggregates (GROUP BY user, item, event type, rating value), so a check
over a window of a million events costs a few grouped scans rather than a million rows in Python.

Per-event features (each event contributes one value):
- numeric: `user_activity` (the user's events in the window), `item_popularity_rank` (where the item
  stood in the reference window's popularity ranking, 0 = most popular, 1 = absent from it: a shift of
  attention to other items moves this), `rating_value` (rating events only: label drift);
- categorical: `event_type` (the event-type mix), `category` (the categories of the items interacted
  with), `item_novelty` (whether the item's first-ever event falls inside the window).
Numeric features: PSI over the reference quantile bins and the Wasserstein distance normalised by the
reference's interquartile range (a two-sample KS test instead when the window has under 1,000 rows).
Categorical features: PSI over the categories and the Jensen–Shannon distance.
Prediction drift: the scores the champion gave in the lists it served in the window, against those of its
first window of the same length (from the impression log), by the numeric measures above."""

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from django.db.models import Count, Min
from scipy import stats
from scipy.spatial.distance import jensenshannon

from recommendations.models import Impression, Interaction, Item, ItemFeatures
from registry.models import ModelVersion
from retraining.models import DriftReport, RetrainPolicy

NUMERIC = ["user_activity", "item_popularity_rank", "rating_value"]
RANKED_ITEMS_KEPT = 20_000
CATEGORICAL = ["event_type", "category", "item_novelty"]
BINS = 10
SAMPLE = 4000
EPS = 1e-4
KS_BELOW = 1000
MIN_SERVED_LISTS = 50


@dataclass
class Window:
    start: datetime
    end: datetime
    events: int


def drift_window(*, end: datetime, days: float, min_events: int) -> Window:
    """The last `days` before `end`, widened backwards to hold at least `min_events` events."""
    start = end - timedelta(days=days)
    before_end = Interaction.objects.filter(timestamp__lt=end)
    count = before_end.filter(timestamp__gte=start).count()
    if count < min_events:
        boundary = (
            before_end.order_by("-timestamp").values_list("timestamp", flat=True)[min_events - 1 : min_events].first()
        )
        start = (
            boundary
            if boundary is not None
            else (before_end.order_by("timestamp").values_list("timestamp", flat=True).first() or start)
        )
        count = before_end.filter(timestamp__gte=start).count()
    return Window(start=start, end=end, events=count)


def drift_profile(*, window: Window, popularity_rank: dict[str, float] | None = None, seed: int = 0) -> dict:
    """The per-event feature distributions of the events in [start, end). `popularity_rank` is the
    reference's item ranking; without it (building a reference) the window ranks its own items."""
    events = Interaction.objects.filter(timestamp__gte=window.start, timestamp__lt=window.end)
    total = events.count()
    per_user = np.array([c for (c,) in events.values("user_id").annotate(c=Count("id")).values_list("c")], dtype=float)
    item_counts = dict(events.values("item_id").annotate(c=Count("id")).values_list("item_id", "c"))
    counts = np.array(list(item_counts.values()), dtype=float)
    own_rank = _popularity_rank(item_counts)
    ranks = popularity_rank if popularity_rank is not None else own_rank
    item_rank = np.array([ranks.get(str(item_id), 1.0) for item_id in item_counts], dtype=float)
    ratings = (
        events.filter(event_type="rating", value__isnull=False)
        .values("value")
        .annotate(c=Count("id"))
        .values_list("value", "c")
    )
    rng = np.random.default_rng(seed)
    numeric = {
        "user_activity": _weighted_sample(per_user, per_user, rng),
        "item_popularity_rank": _weighted_sample(item_rank, counts, rng),
        "rating_value": _weighted_sample(*_pairs(ratings), rng),
    }
    first_seen = dict(
        ItemFeatures.objects.filter(item_id__in=item_counts.keys()).values_list("item_id", "first_event_at")
    )
    categories = dict(Item.objects.filter(pk__in=item_counts.keys()).values_list("pk", "categories"))
    category_mix, novelty = Counter(), Counter()
    for item_id, count in item_counts.items():
        for category in categories.get(item_id) or ["(none)"]:
            category_mix[category] += count
        novelty["new" if first_seen.get(item_id) and first_seen[item_id] >= window.start else "known"] += count
    categorical = {
        "event_type": dict(events.values("event_type").annotate(c=Count("id")).values_list("event_type", "c")),
        "category": dict(category_mix),
        "item_novelty": dict(novelty),
    }
    return {
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat(), "events": total},
        "numeric": {name: sample.tolist() for name, sample in numeric.items()},
        "categorical": {name: _shares(mix) for name, mix in categorical.items()},
        "rows": {**{name: len(sample) for name, sample in numeric.items()}, "events": total},
        "popularity_rank": own_rank,
    }


def drift_reference(*, profile: dict) -> dict:
    """The reference stored in a manifest: quantile bins and shares per numeric feature (plus a sample
    for distances), shares per category."""
    reference = {
        "window": profile["window"],
        "numeric": {},
        "categorical": profile["categorical"],
        "popularity_rank": profile["popularity_rank"],
    }
    for name, values in profile["numeric"].items():
        sample = np.asarray(values, dtype=float)
        if not len(sample):
            reference["numeric"][name] = {"edges": [], "shares": [], "sample": []}
            continue
        edges = np.unique(np.quantile(sample, np.linspace(0, 1, BINS + 1)))
        reference["numeric"][name] = {
            "edges": edges.tolist(),
            "shares": _bin_shares(sample, edges).tolist(),
            "sample": sample.tolist(),
        }
    return reference


def drift_compare(*, reference: dict, profile: dict, policy: RetrainPolicy) -> dict:
    """Scores and verdicts per feature, and the overall verdict."""
    scores = {}
    for name in NUMERIC:
        current = np.asarray(profile["numeric"].get(name, []), dtype=float)
        scores[name] = _numeric_score(
            reference["numeric"].get(name), current, int(profile["rows"].get(name, len(current))), policy
        )
    for name in CATEGORICAL:
        ref, current = reference["categorical"].get(name) or {}, profile["categorical"].get(name) or {}
        if not ref or not current:
            scores[name] = {"kind": "categorical", "psi": None, "verdict": "no data"}
            continue
        keys = sorted(set(ref) | set(current))
        r, c = np.array([ref.get(k, 0.0) for k in keys]), np.array([current.get(k, 0.0) for k in keys])
        psi = _psi(r, c)
        scores[name] = {
            "kind": "categorical",
            "psi": psi,
            "js_distance": float(jensenshannon(r, c, base=2)),
            "verdict": _verdict(psi, policy),
        }
    return drift_overall(features=scores, policy=policy)


def drift_overall(*, features: dict, policy: RetrainPolicy) -> dict:
    """The dataset's verdict from the per-feature ones."""
    judged = [s for s in features.values() if s["verdict"] != "no data"]
    drifted = [name for name, s in features.items() if s["verdict"] == "drift"]
    share = len(drifted) / len(judged) if judged else 0.0
    key_drift = sorted(set(drifted) & set(policy.drift_key_features or []))
    if share >= policy.drift_share_threshold or key_drift:
        verdict = DriftReport.Verdict.DRIFT
    elif any(s["verdict"] in ("warning", "drift") for s in judged):
        verdict = DriftReport.Verdict.WARNING
    else:
        verdict = DriftReport.Verdict.OK
    psis = [s["psi"] for s in judged if s["psi"] is not None]
    return {
        "features": features,
        "drifted": drifted,
        "key_drifted": key_drift,
        "drifted_share": share,
        "overall_score": float(np.mean(psis)) if psis else 0.0,
        "verdict": verdict,
    }


def _numeric_score(reference: dict | None, current: np.ndarray, rows: int, policy: RetrainPolicy) -> dict:
    """PSI over the reference's quantile bins, the Wasserstein distance normalised by the reference's IQR,
    and a two-sample KS test when there are few rows."""
    if not reference or not reference["sample"] or not len(current):
        return {"kind": "numeric", "psi": None, "verdict": "no data", "rows": len(current)}
    psi = _psi(np.asarray(reference["shares"]), _bin_shares(current, np.asarray(reference["edges"])))
    ref_sample = np.asarray(reference["sample"])
    spread = float(np.subtract(*np.quantile(ref_sample, [0.75, 0.25]))) or float(np.std(ref_sample)) or 1.0
    entry = {
        "kind": "numeric",
        "psi": psi,
        "rows": rows,
        "wasserstein_normed": float(stats.wasserstein_distance(ref_sample, current) / spread),
    }
    if rows < KS_BELOW:
        result = stats.ks_2samp(ref_sample, current)
        entry.update(ks_statistic=float(result.statistic), ks_pvalue=float(result.pvalue))
    entry["verdict"] = _verdict(psi, policy, small_sample_pvalue=entry.get("ks_pvalue"))
    return entry


def prediction_drift(*, champion: ModelVersion, window: Window, policy: RetrainPolicy) -> dict:
    """The champion's served scores in the window against those of its first window of the same length
    after it started serving (prediction drift). No data until both hold MIN_SERVED_LISTS lists."""
    served = Impression.objects.filter(model_version=champion.version, strategy=Impression.Strategy.MODEL)
    first = served.aggregate(first=Min("served_at"))["first"]
    empty = {"kind": "numeric", "psi": None, "verdict": "no data", "rows": 0}
    if first is None:
        return empty
    baseline_end = first + (window.end - window.start)
    reference = _served_scores(served.filter(served_at__gte=first, served_at__lt=baseline_end))
    current = _served_scores(served.filter(served_at__gte=max(window.start, baseline_end), served_at__lt=window.end))
    if len(reference) < MIN_SERVED_LISTS * 10 or len(current) < MIN_SERVED_LISTS * 10:
        return {**empty, "rows": len(current)}
    bins = drift_reference(
        profile={"window": {}, "categorical": {}, "popularity_rank": {}, "numeric": {"score": reference.tolist()}}
    )["numeric"]["score"]
    return _numeric_score(bins, current, len(current), policy)


def _served_scores(impressions) -> np.ndarray:
    lists = impressions.order_by("-served_at").values_list("scores", flat=True)[: SAMPLE // 10]
    return np.array([score for scores in lists for score in scores], dtype=float)


def drift_check_run(*, policy: RetrainPolicy, now: datetime, champion: ModelVersion | None) -> DriftReport | None:
    """Compare the recent window with the champion's reference; None when there is no reference yet."""
    reference = (champion.manifest or {}).get("drift_reference") if champion else None
    if not reference:
        return None
    started = time.perf_counter()
    window = drift_window(end=now, days=policy.drift_window_days, min_events=policy.drift_window_min_events)
    profile = drift_profile(window=window, popularity_rank=reference.get("popularity_rank", {}))
    features = drift_compare(reference=reference, profile=profile, policy=policy)["features"]
    features["prediction_score"] = prediction_drift(champion=champion, window=window, policy=policy)
    result = drift_overall(features=features, policy=policy)
    extra = {name: result["features"][name] for name in ("event_type", "rating_value")}
    return DriftReport.objects.create(
        window_start=window.start,
        window_end=window.end,
        events_in_window=window.events,
        sampled_rows=max(profile["rows"].values()),
        reference_version=champion,
        feature_scores=result["features"],
        extra_scores={
            "event_type_mix": extra["event_type"],
            "label_drift": extra["rating_value"],
            "prediction_drift": result["features"]["prediction_score"],
            "drifted": result["drifted"],
            "key_drifted": result["key_drifted"],
        },
        drifted_share=result["drifted_share"],
        overall_score=result["overall_score"],
        verdict=result["verdict"],
        duration_s=time.perf_counter() - started,
    )


def _popularity_rank(item_counts: dict[int, int]) -> dict[str, float]:
    """Item → rank percentile by events (0 = most popular), for the most popular RANKED_ITEMS_KEPT."""
    ordered = sorted(item_counts, key=lambda item_id: -item_counts[item_id])
    n = max(len(ordered), 1)
    return {str(item_id): position / n for position, item_id in enumerate(ordered[:RANKED_ITEMS_KEPT])}


def _verdict(psi: float, policy: RetrainPolicy, small_sample_pvalue: float | None = None) -> str:
    if psi >= policy.drift_psi_threshold and (small_sample_pvalue is None or small_sample_pvalue < 0.05):
        return "drift"
    if psi >= policy.drift_psi_warning:
        return "warning"
    return "ok"


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    r = np.clip(reference / max(reference.sum(), EPS), EPS, None)
    c = np.clip(current / max(current.sum(), EPS), EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    if len(edges) < 2:
        return np.ones(1)
    index = np.searchsorted(edges[1:-1], values, side="right")
    counts = np.bincount(index, minlength=len(edges) - 1).astype(float)
    return counts / max(counts.sum(), 1.0)


def _weighted_sample(values: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-event values from (value, number of events) pairs: all of them when few, else a weighted sample."""
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    total = int(weights.sum())
    if total == 0:
        return np.array([])
    if total <= SAMPLE:
        return np.repeat(values, weights.astype(int))
    return rng.choice(values, size=SAMPLE, p=weights / weights.sum())


def _pairs(rows) -> tuple[np.ndarray, np.ndarray]:
    rows = list(rows)
    return np.array([v for v, _ in rows], dtype=float), np.array([c for _, c in rows], dtype=float)


def _shares(mix: dict) -> dict:
    total = sum(mix.values())
    return {str(k): v / total for k, v in mix.items()} if total else {}
