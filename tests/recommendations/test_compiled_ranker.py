"""The compiled ranker (lleaves) scores exactly what LightGBM's predictor scores, its object-code cache is
checked before it is loaded, and serving falls back to LightGBM when compiling fails."""

import hashlib

import lightgbm as lgb
import numpy as np
import pytest

from recommendations import ranking
from recommendations.serving import loading
from registry.models import ModelVersion
from tests.recommendations.factories import store_history, train_and_register


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A LightGBM lambdarank model over RANKER_FEATURES, trained on data with missing values."""
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(3000, len(ranking.RANKER_FEATURES)))
    matrix[rng.random(matrix.shape) < 0.1] = np.nan
    label = (np.nan_to_num(matrix[:, 0]) + np.nan_to_num(matrix[:, 7]) * 0.5 + rng.normal(size=3000) > 0.8).astype(int)
    data = lgb.Dataset(matrix, label, group=[30] * 100, feature_name=ranking.RANKER_FEATURES)
    booster = lgb.train(
        {"objective": "lambdarank", "num_leaves": 15, "min_data_in_leaf": 20, "verbose": -1, "num_threads": 1},
        data,
        num_boost_round=40,
    )
    path = tmp_path_factory.mktemp("ranker") / ranking.RANKER_FILE
    booster.save_model(str(path))
    return path


def _probe(seed: int, rows: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.normal(scale=2.0, size=(rows, len(ranking.RANKER_FEATURES))).astype(np.float32)
    matrix[rng.random(matrix.shape) < 0.2] = np.nan
    matrix[:5] = np.nan  # whole rows missing
    return matrix


def test_compiled_scores_equal_lightgbm_scores(model_file, tmp_path):
    booster = lgb.Booster(model_file=str(model_file))
    compiled = ranking.CompiledRanker(model_file, cache_dir=tmp_path)
    for seed in range(3):
        matrix = _probe(seed)
        expected = ranking.ranker_scores(booster, matrix)
        np.testing.assert_allclose(compiled.scores(matrix), expected, rtol=1e-12, atol=1e-12)
    assert compiled.scores(np.empty((0, len(ranking.RANKER_FEATURES)), dtype=np.float32)).shape == (0,)


def test_the_object_code_is_cached_and_loaded_only_with_its_trusted_digest(model_file, tmp_path):
    first = ranking.CompiledRanker(model_file, cache_dir=tmp_path)
    [cached] = tmp_path.glob("ranker-*.o")
    assert first.sha256 == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".ranker-*")) and not list(tmp_path.glob("*.sha256")), "no scratch, no sidecar"
    stamp = cached.stat().st_mtime_ns
    second = ranking.CompiledRanker(model_file, cache_dir=tmp_path, trusted_sha256=first.sha256)
    assert cached.stat().st_mtime_ns == stamp, "loaded from the cache, not compiled again"
    np.testing.assert_array_equal(second.scores(_probe(7)), first.scores(_probe(7)))

    cached.write_bytes(b"not object code")  # a corrupted cache is never loaded: it is compiled again
    third = ranking.CompiledRanker(model_file, cache_dir=tmp_path, trusted_sha256=first.sha256)
    np.testing.assert_array_equal(third.scores(_probe(7)), first.scores(_probe(7)))
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == third.sha256


@pytest.mark.django_db
def test_serving_scores_with_the_compiled_ranker_or_falls_back_to_lightgbm(tmp_path, settings, monkeypatch):
    settings.MODEL_STORE, settings.RANKER_COMPILED = tmp_path / "store", True
    store_history()
    version = train_and_register(tmp_path)
    matrix = _probe(11, rows=50)
    expected = ranking.ranker_scores(loading.trained_model_of(version).ranker, matrix)

    compiled = loading.serving_model_load(version)
    assert list((tmp_path / "store" / "compiled").glob("ranker-*.o"))
    np.testing.assert_allclose(compiled.scores(matrix), expected, rtol=1e-12, atol=1e-12)

    def broken(*args, **kwargs):
        raise OSError("no LLVM here")

    monkeypatch.setattr(ranking, "CompiledRanker", broken)
    fallback = loading.serving_model_load(version)
    np.testing.assert_array_equal(fallback.scores(matrix), expected)


@pytest.mark.django_db
def test_a_precompiled_ranker_is_loaded_from_the_cache(tmp_path, settings):
    settings.MODEL_STORE, settings.RANKER_COMPILED = tmp_path / "store", True
    store_history()
    version = train_and_register(tmp_path)
    checksums = loading.ranker_precompile(tmp_path / "run")
    ModelVersion.objects.filter(pk=version.pk).update(compiled_checksums=checksums)  # as registration records them
    version.refresh_from_db()
    [cached] = loading.ranker_cache_dir().glob("ranker-*.o")
    stamp = cached.stat().st_mtime_ns
    loading.serving_model_load(version)
    assert [path.name for path in loading.ranker_cache_dir().glob("ranker-*.o")] == [cached.name]
    assert cached.stat().st_mtime_ns == stamp
