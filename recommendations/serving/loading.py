"""Loading a registered version's artifact: verify, unpack, load the models, compile the ranker. Training
imports this module (to evaluate the champion and precompile a new ranker) without the web runtime."""

import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from django.conf import settings

from recommendations import ranking
from registry.artifacts import artifact_read
from registry.models import ModelVersion
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
    ranker, the rating regressor and the collaborative model, as serving loads them. Raises if one does not.
    A version whose rating model is the bias model alone (manifest rating_model.kind "bias") has no regressor."""
    with _files_unpacked(files, prefix="model-check-") as folder:
        trained = ranking.trained_model_load(folder)
    if trained.regressor is None and trained.manifest.get("rating_model", {}).get("kind") != "bias":
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
