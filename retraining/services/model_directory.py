"""Writing a trained model directory (read back by recommendations.ranking.trained_model_load).

LightGBM boosters in their text format, the collaborative model as plain numeric arrays (.npz, read with
allow_pickle=False), id maps and the manifest as JSON. Never pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightgbm as lgb
import numpy as np

from recommendations import ranking

DRIFT_BINS = 10


def reference_distribution(values: np.ndarray, bins: int = DRIFT_BINS) -> dict:
    """Quantile bin edges of one feature over the training examples and the share of rows per bin.

    Bin i holds edges[i] <= x < edges[i+1] (the first and last bins are open-ended); NaN is counted apart,
    so a drift check bins new values with np.searchsorted(edges[1:-1], x, side="right")."""
    finite = values[np.isfinite(values)].astype(np.float64)
    nan_share = 1.0 - len(finite) / len(values) if len(values) else 0.0
    if not len(finite):
        return {"edges": [], "shares": [], "nan_share": nan_share}
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    index = np.searchsorted(edges[1:-1], finite, side="right")
    counts = np.bincount(index, minlength=max(len(edges) - 1, 1))
    return {
        "edges": edges.tolist(),
        "shares": (counts / len(values)).tolist(),
        "nan_share": nan_share,
    }


def reference_distributions(matrix: np.ndarray, names: list[str]) -> dict[str, dict]:
    return {name: reference_distribution(matrix[:, column]) for column, name in enumerate(names)}


def model_directory_write(
    *,
    directory: Path,
    ranker: lgb.Booster,
    regressor: lgb.Booster | None,
    collaborative: ranking.CollaborativeModel,
    item_external_ids: list[str],
    manifest: dict,
) -> list[Path]:
    """Write every file of the model directory, each fsynced; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / ranking.RANKER_FILE]
    ranker.save_model(str(written[-1]))
    if regressor is not None:
        written.append(directory / ranking.REGRESSOR_FILE)
        regressor.save_model(str(written[-1]))
    written.append(directory / ranking.COLLABORATIVE_FILE)
    with open(written[-1], "wb") as handle:
        np.savez(
            handle,
            item_pks=collaborative.item_pks,
            active=collaborative.active,
            modelled=collaborative.modelled,
            weights=collaborative.weights,
            popularity=collaborative.popularity,
        )
    written.append(directory / ranking.ID_MAPS_FILE)
    written[-1].write_text(
        json.dumps({"item_pks": collaborative.item_pks.tolist(), "item_external_ids": item_external_ids})
    )
    written.append(directory / ranking.MANIFEST_FILE)
    written[-1].write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False))
    for path in written:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    return written
