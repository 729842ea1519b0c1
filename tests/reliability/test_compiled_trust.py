"""Native code is trusted only through the registry: a compiled ranker's sha256 is recorded with its version
(at registration, or by the first compile from the verified artifact), never read from a sidecar in the
writable cache folder. An object file copied over another version's is detected on load, compiled again from
the verified artifact, and the right version's scores are served."""

import hashlib
import logging
import shutil

import lightgbm as lgb
import numpy as np
import pytest

from recommendations import ranking
from recommendations.serving import loading
from registry.models import ModelVersion
from registry.services import VersionInput, model_version_register
from tests.registry.factories import artifact_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def compiled_store(settings, tmp_path):
    settings.MODEL_STORE, settings.RANKER_COMPILED = tmp_path / "store", True


def _register_precompiled(tmp_path, marker: str, seed: int) -> tuple[ModelVersion, lgb.Booster]:
    """As a training run registers a version (retraining.services.pipeline.candidate_register)."""
    folder = artifact_dir(tmp_path, marker, seed=seed)
    compiled = loading.ranker_precompile(folder)
    version = model_version_register(
        artifact_dir=folder, data=VersionInput({}, {}, {}, {}, {"marker": marker}, compiled_checksums=compiled)
    )
    return version, lgb.Booster(model_file=str(folder / ranking.RANKER_FILE))


def _probe() -> np.ndarray:
    return np.random.default_rng(5).normal(size=(40, len(ranking.RANKER_FEATURES))).astype(np.float32)


def test_registration_records_the_compiled_rankers_checksum_in_the_database(compiled_store, tmp_path):
    version, _ = _register_precompiled(tmp_path, "a", seed=1)
    [(key, digest)] = version.compiled_checksums.items()
    cached = loading.ranker_cache_dir() / f"ranker-{key}.o"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    assert not list(loading.ranker_cache_dir().glob("*.sha256")), "no sidecar is written or trusted"


def test_another_versions_object_code_copied_over_is_detected_and_the_right_scores_served(
    compiled_store, tmp_path, caplog
):
    first, first_booster = _register_precompiled(tmp_path, "a", seed=1)
    second, second_booster = _register_precompiled(tmp_path, "b", seed=2)
    probe = _probe()
    assert not np.allclose(first_booster.predict(probe), second_booster.predict(probe)), "the two rankers differ"
    [first_key], [second_key] = first.compiled_checksums, second.compiled_checksums
    cache = loading.ranker_cache_dir()
    shutil.copyfile(cache / f"ranker-{first_key}.o", cache / f"ranker-{second_key}.o")
    (cache / f"ranker-{second_key}.o.sha256").write_text(first.compiled_checksums[first_key])  # a forged sidecar

    with caplog.at_level(logging.ERROR, logger="recommendations.ranking"):
        loaded = loading.serving_model_load(second)  # a fresh process's load
    np.testing.assert_allclose(loaded.scores(probe), second_booster.predict(probe), rtol=1e-9, atol=1e-9)
    assert any("does not match its recorded sha256" in r.getMessage() for r in caplog.records)
    replaced = hashlib.sha256((cache / f"ranker-{second_key}.o").read_bytes()).hexdigest()
    assert replaced == second.compiled_checksums[second_key], "the cache holds the trusted object again"
    second.refresh_from_db()
    assert second.compiled_checksums == {second_key: replaced}, "the recorded checksum is not overwritten"


def test_an_untrusted_cached_object_is_compiled_again_and_the_first_trusted_compile_is_recorded(
    compiled_store, tmp_path
):
    first, _ = _register_precompiled(tmp_path, "a", seed=1)
    folder = artifact_dir(tmp_path, "c", seed=2)
    version = model_version_register(artifact_dir=folder, data=VersionInput({}, {}, {}, {}, {}))  # no checksum
    key = ranking.compiled_ranker_key(folder / ranking.RANKER_FILE)
    cache = loading.ranker_cache_dir()
    shutil.copyfile(cache / f"ranker-{next(iter(first.compiled_checksums))}.o", cache / f"ranker-{key}.o")

    loaded = loading.serving_model_load(version)
    probe = _probe()
    expected = lgb.Booster(model_file=str(folder / ranking.RANKER_FILE)).predict(probe)
    np.testing.assert_allclose(loaded.scores(probe), expected, rtol=1e-9, atol=1e-9)
    version.refresh_from_db()
    assert version.compiled_checksums == {key: hashlib.sha256((cache / f"ranker-{key}.o").read_bytes()).hexdigest()}


def test_a_recorded_object_loads_from_the_cache_without_compiling(compiled_store, tmp_path, monkeypatch):
    version, booster = _register_precompiled(tmp_path, "a", seed=1)
    monkeypatch.setattr(ranking.CompiledRanker, "_compile", lambda *args: pytest.fail("compiled again"))
    loaded = loading.serving_model_load(version)
    np.testing.assert_allclose(loaded.scores(_probe()), booster.predict(_probe()), rtol=1e-9, atol=1e-9)
