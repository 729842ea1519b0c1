import json
from dataclasses import replace
from datetime import UTC, datetime
from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from registry.models import ModelVersion
from retraining.services.dataset import event_log_load
from tests.retraining.factories import DAY, START, dataset_store, dataset_with_events, learnable_dataset

RANKING_KEYS = {"ndcg@10", "recall@10", "precision@10", "map@10", "hit_rate@10", "coverage@10"}


@pytest.fixture
def stored(db):
    dataset = learnable_dataset(users=60, items=50, per_user=20)
    dataset_store(dataset)
    return dataset


def test_the_dataset_builder_reads_the_events_before_the_cut_off_in_time_order(stored):
    until = datetime.fromtimestamp(START + 60 * DAY, tz=UTC)
    log = event_log_load(until=until, chunk_size=97)
    expected = sorted(e.ts for e in stored.events if e.ts < until.timestamp())
    assert log.ts.tolist() == pytest.approx(expected)
    assert (np.diff(log.ts) >= 0).all()
    assert log.value.dtype == np.float32 and log.user.dtype == np.int32
    assert len(log.item_pks) == 50 and log.item_categories[0][0].startswith("genre-")


def test_train_json_prints_the_contract_as_the_last_line_and_writes_the_model(stored, tmp_path):
    out = StringIO()
    call_command(
        "train", "--json", "--output", str(tmp_path / "model"), "--threads", "1", stdout=out, stderr=StringIO()
    )
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert RANKING_KEYS | {"rmse", "mae", "r2"} <= result["metrics"].keys()
    assert result["baselines"].keys() == {"popularity", "ease", "itemknn", "global_mean", "bias"}
    assert all(result["baselines"][name].keys() >= RANKING_KEYS for name in ("popularity", "ease", "itemknn"))
    for name in ("global_mean", "bias"):  # the rating baselines, on the same held-out ratings as the model
        assert result["baselines"][name].keys() >= {"rmse", "mae", "r2"}
    assert result["baselines"]["bias"]["l2"] > 0
    metrics = result["metrics"]
    # The ranker reorders the candidate pool: its recall@10 cannot exceed the pool's, which holds the first 100.
    assert metrics["recall@10"] <= metrics["candidate_recall"] <= 1.0
    assert metrics["candidate_recall@100"] <= metrics["candidate_recall"]
    assert metrics["candidates_per_user"] > 10
    assert result["dataset"].keys() >= {"users", "items", "events", "train_events", "holdout_events"}
    assert result["dataset"]["events"] == len(stored.events)
    assert result["timings_s"] and isinstance(result["peak_memory_mb"], float)
    assert result["segments"].keys() == {"new", "light", "heavy"}
    assert sum(row["users"] for row in result["segments"].values()) > 0
    assert (tmp_path / "model" / "manifest.json").exists()


def test_train_with_refit_keeps_the_model_trained_on_every_event_and_the_evaluated_models_metrics(stored, tmp_path):
    out = StringIO()
    call_command(
        "train",
        "--json",
        "--refit-on-full-data",
        "--output",
        str(tmp_path / "model"),
        "--threads",
        "1",
        stdout=out,
        stderr=StringIO(),
    )
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["dataset"]["holdout_events"] == 0 and result["dataset"]["train_events"] == len(stored.events)
    assert RANKING_KEYS | {"rmse"} <= result["metrics"].keys()
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["params"]["refit_on_full_data"] is True and manifest["metrics"] == result["metrics"]
    assert ModelVersion.objects.get(version=result["version"]).parameters["refit_on_full_data"] is True


def test_train_without_json_prints_a_table_with_the_lift_over_each_baseline(stored, tmp_path):
    out = StringIO()
    call_command("train", "--output", str(tmp_path), "--threads", "1", stdout=out, stderr=StringIO())
    assert "lift over popularity" in out.getvalue() and "lift over ease" in out.getvalue()
    assert "baseline bias (λ=" in out.getvalue() and "baseline global_mean: RMSE" in out.getvalue()
    assert "lift over itemknn" in out.getvalue() and "candidate stage: recall@100" in out.getvalue()


def test_evaluate_baselines_prints_every_baseline_and_the_candidate_stages_recall(stored):
    out = StringIO()
    call_command("evaluate_baselines", "--json", stdout=out, stderr=StringIO())
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["baselines"].keys() == {"popularity", "ease", "itemknn"}
    assert 0.0 < result["candidates"]["candidate_recall@100"] <= result["candidates"]["candidate_recall"] <= 1.0


def test_train_refuses_a_cut_off_that_is_not_a_time(db):
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("train", "--until", "yesterday")


def test_train_refuses_a_database_too_small_to_hold_anything_out(db, tmp_path):
    with pytest.raises(CommandError, match="too few events"):
        call_command("train", "--output", str(tmp_path), stdout=StringIO(), stderr=StringIO())


def test_train_refuses_data_without_any_positive_event_to_learn_from(db, tmp_path):
    dataset = learnable_dataset(users=20, items=30, per_user=12)
    dataset_store(dataset_with_events(dataset, [replace(e, event_type="view", value=None) for e in dataset.events]))
    with pytest.raises(CommandError, match="no label window has a positive"):
        call_command("train", "--output", str(tmp_path), stdout=StringIO(), stderr=StringIO())
