import json
from functools import lru_cache
from pathlib import Path

import lightgbm as lgb
import numpy as np

from recommendations import ranking
from registry.models import ModelVersion
from registry.services import VersionInput, model_version_register


@lru_cache(maxsize=4)
def _tiny_boosters(seed: int) -> tuple[str, str]:
    """A ranker and a rating regressor over this code's features, trained on noise in milliseconds: enough
    for an artifact that loads (the registry refuses to deploy one that does not)."""
    rng = np.random.default_rng(seed)
    params = {"verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5, "num_threads": 1}
    ranker_x = rng.normal(size=(60, len(ranking.RANKER_FEATURES)))
    ranker = lgb.train(
        {**params, "objective": "lambdarank"},
        num_boost_round=2,
        train_set=lgb.Dataset(ranker_x, rng.integers(0, 2, 60), group=[10] * 6, feature_name=ranking.RANKER_FEATURES),
    )
    regressor_x = rng.normal(size=(60, len(ranking.REGRESSOR_FEATURES)))
    regressor = lgb.train(
        {**params, "objective": "regression"},
        num_boost_round=2,
        train_set=lgb.Dataset(regressor_x, rng.uniform(1, 5, 60), feature_name=ranking.REGRESSOR_FEATURES),
    )
    return ranker.model_to_string(), regressor.model_to_string()


def artifact_dir(tmp_path: Path, marker: str = "a", *, seed: int = 0) -> Path:
    """A loadable model directory; `marker` makes its bytes (and so its checksum) its own, `seed` its models."""
    folder = tmp_path / f"artifact-{marker}"
    folder.mkdir(parents=True, exist_ok=True)
    ranker, regressor = _tiny_boosters(seed)
    (folder / ranking.RANKER_FILE).write_text(ranker)
    (folder / ranking.REGRESSOR_FILE).write_text(regressor)
    np.savez(
        folder / ranking.COLLABORATIVE_FILE,
        item_pks=np.arange(1, 4, dtype=np.int64),
        active=np.ones(3, dtype=bool),
        modelled=np.arange(3, dtype=np.int32),
        weights=np.zeros((3, 3), dtype=np.float32),
        popularity=np.ones(3),
    )
    (folder / ranking.ID_MAPS_FILE).write_text(json.dumps({"item_external_ids": ["i1", "i2", "i3"]}))
    manifest = {"marker": marker, "features": {"ranker": ranking.RANKER_FEATURES}}
    (folder / ranking.MANIFEST_FILE).write_text(json.dumps(manifest))
    (folder / "marker.txt").write_text(f"marker={marker}\n")
    return folder


def registered_version(tmp_path: Path, *, ndcg: float = 0.1, marker: str | None = None, **metrics) -> ModelVersion:
    marker = marker or f"m{ModelVersion.objects.count()}"
    data = VersionInput(
        metrics={"ndcg@10": ndcg, "rmse": 0.9, "mae": 0.7, "r2": 0.25, "recall@10": 0.1, "map@10": 0.05, **metrics},
        baseline_metrics={"popularity": {"ndcg@10": 0.07}},
        dataset_stats={"users": 10, "items": 20, "events": 300},
        parameters={"num_leaves": 31},
        manifest={"marker": marker},
        trigger_reason="manual",
    )
    return model_version_register(artifact_dir=artifact_dir(tmp_path, marker), data=data)
