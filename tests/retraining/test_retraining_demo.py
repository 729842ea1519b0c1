from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command

from recommendations.clock import clock_set
from retraining.models import TrainingRun
from tests.retraining.factories import dataset_store, learnable_dataset

pytestmark = pytest.mark.django_db


def test_the_demo_shows_old_against_new_on_the_same_holdout_and_the_gates_verdict(tmp_path, capsys, replay_clock):
    dataset_store(learnable_dataset(users=120, items=80, per_user=24))
    # v1 is trained up to April 21 (the history runs to about May 1), so some held-out events are newer than it.
    clock_set(simulated_now=datetime(2025, 4, 21, tzinfo=UTC), speed=1.0)
    call_command("retraining_demo", "--output", str(tmp_path / "MC.md"))  # no champion yet: first version
    clock_set(simulated_now=datetime(2025, 6, 1, tzinfo=UTC), speed=1.0)
    call_command("retraining_demo", "--output", str(tmp_path / "MC.md"))  # now old vs new
    out = capsys.readouterr().out
    table = out[out.rindex("(3) Old vs new") : out.rindex("(4) Gate")]
    for label in ["RMSE ↓", "MAE ↓", "R² ↑", "Recall@10 ↑", "MAP@10 ↑", "NDCG@10 ↑"]:
        assert label in table
    assert "popularity" in table and "ease" in table
    assert "rating baselines on the same held-out ratings" in table
    assert "baseline bias (λ=" in table and "baseline global_mean" in table
    second = TrainingRun.objects.order_by("-id").first()
    assert f"v{second.model_version.version} {'PROMOTED' if second.status == 'promoted' else 'REJECTED'}" in out
    assert second.gate["champion_version"] == 1
    events = f"the {second.gate['comparison_events']:,} held-out events after v1's training cut-off"
    assert f"every row and column below: {events}" in table
    ndcg_row = next(line for line in table.splitlines() if "NDCG@10 ↑" in line).split()
    baselines = second.gate["comparison_baselines"]
    assert ndcg_row[-2:] == [f"{baselines['popularity']['ndcg@10']:.4f}", f"{baselines['ease']['ndcg@10']:.4f}"]
    assert second.gate["numbers"]["popularity"] == baselines["popularity"]  # the gate's bar: the same events
    bias_line = next(line for line in table.splitlines() if "baseline bias (λ=" in line)
    assert f"RMSE {baselines['bias']['rmse']:.4f}" in bias_line  # the comparison's held-out ratings, not v2's own
    assert baselines["bias"] == second.gate["numbers"]["rating_bias"]
    assert baselines["bias"]["rmse"] != second.model_version.baseline_metrics["bias"]["rmse"]
    assert "| **v" in (tmp_path / "MC.md").read_text()


def test_on_an_empty_database_the_demo_sets_up_a_timeline_first(tmp_path, capsys):
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "movielens-csv-mini"
    call_command("retraining_demo", "--dataset", str(fixture), "--output", str(tmp_path / "MC.md"))
    out = capsys.readouterr().out
    assert "set-up: imported" in out and "newer events arrived" in out and "(5) Where everything is" in out
    assert TrainingRun.objects.count() == 2
