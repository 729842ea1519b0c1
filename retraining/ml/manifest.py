"""The manifest of a trained model directory (manifest.json), and the strict-JSON rule it and the reports
share."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from retraining.ml.events import EventLog
from retraining.ml.metrics import CF_NAME
from retraining.ml.params import TrainingParams
from retraining.ml.split import Split

FORMAT = 1
METRICS_FROM_OWN_HOLDOUT = "this model, on the holdout"
METRICS_FROM_GATED_MODEL = "the gated model before the refit, on the holdout (this model was trained on it)"


def json_safe(value):
    """NaN and infinities become null: the manifest and `--json` output are strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class Manifest:
    params: TrainingParams
    ranker: lgb.Booster
    ranker_blend: ranking.RankerBlend
    regressor: lgb.Booster | None
    collaborative: ranking.CollaborativeModel
    refit: bool  # trained on all data after a gate: its metrics are the gated model's
    training_window: dict  # training_window(log, split)
    dataset: dict  # dataset_statistics(log, split)
    ranker_examples: int
    ranker_groups: int
    category_share: dict
    reference_distributions: dict  # {"ranker": {feature: distribution}}, for drift checks
    metrics: dict
    baselines: dict
    timings_s: dict
    rating_model: dict = field(default_factory=dict)  # RatingModel.manifest(): kind, the biases' λ, features
    ranker_selection: dict = field(default_factory=dict)  # retraining.ml.tuning.RankerSelection.manifest()
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_dict(self) -> dict:
        """The manifest.json document (strict JSON: NaN becomes null)."""
        return json_safe(
            {
                "format": FORMAT,
                "created_at": self.created_at.isoformat(),
                "features": {
                    "ranker": ranking.RANKER_FEATURES,
                    "regressor": self.rating_model.get("features", ranking.REGRESSOR_FEATURES),
                },
                "rating_model": self.rating_model,
                "params": self._params(),
                "training_window": self.training_window,
                "dataset": self.dataset
                | {"ranker_examples": self.ranker_examples, "ranker_groups": self.ranker_groups},
                "category_share": self.category_share,
                "reference_distributions": self.reference_distributions,
                "metrics": self.metrics,
                "baselines": self.baselines,
                "timings_s": dict(self.timings_s),
            }
        )

    def _params(self) -> dict:
        return {
            "training": asdict(self.params),
            "ranker_selection": self.ranker_selection,
            "ranker_blend": asdict(self.ranker_blend),
            "ranker": _booster_params(self.ranker),
            "ranker_best_iteration": self.ranker.best_iteration or self.ranker.current_iteration(),
            "regressor": _booster_params(self.regressor) if self.regressor else None,
            "collaborative": {
                "name": CF_NAME,
                "l2": self.params.ease_l2,
                "modelled_items": len(self.collaborative.modelled),
            },
            "refit_on_full_data": self.refit,
            "metrics_from": METRICS_FROM_GATED_MODEL if self.refit else METRICS_FROM_OWN_HOLDOUT,
        }


def training_window(log: EventLog, split: Split) -> dict:
    """The times the model's data spans, as ISO 8601 (None where there is none)."""
    return {
        "min_event_time": _iso(float(log.ts[0])) if len(log) else None,
        "max_event_time": _iso(float(log.ts[-1])) if len(log) else None,
        "until": _iso(log.until),
        "train_max_event_time": _iso(float(log.ts[split.train].max())) if split.train.any() else None,
    }


def dataset_statistics(log: EventLog, split: Split) -> dict[str, int]:
    return {
        "users": len(np.unique(log.user)),
        "items": int(log.item_active.sum()),
        "events": len(log),
        "train_events": int(split.train.sum()),
        "holdout_events": int(split.holdout.sum()),
    }


def _booster_params(booster: lgb.Booster) -> dict:
    return json.loads(json.dumps(booster.params, default=str))


def _iso(ts: float | None) -> str | None:
    return None if ts is None or not math.isfinite(ts) else datetime.fromtimestamp(ts, tz=UTC).isoformat()
