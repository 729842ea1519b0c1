"""The same events give the same metrics to 4 decimals, whatever the import order, the primary keys or the
process's string-hash seed: every ordering and tie-break in training is by external ids and times."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recommendations.models import (
    EndUser,
    EventReceipt,
    Interaction,
    Item,
    ItemFeatures,
    PendingFold,
    UserFeatures,
    UserItemFirstSeen,
)
from recommendations.services.movielens import movielens_import
from retraining.ml.params import TrainingParams
from retraining.services.dataset import event_log_load
from retraining.services.training import model_train
from tests.retraining.factories import DAY, learnable_dataset
from tests.support.processes import REPO, process_env

PARAMS = TrainingParams(num_threads=1)


def movielens_copy_write(folder: Path, *, shuffle_seed: int | None) -> Path:
    """A learnable dataset as a MovieLens CSV directory, its times cut to the day so that many ratings tie on
    time (as MovieLens' whole seconds do), items with two genres each; rows shuffled with `shuffle_seed`."""
    dataset = learnable_dataset(users=120, items=90, per_user=30)
    genres = [f"{categories[0]}|extra-{i % 3}" for i, categories in enumerate(dataset.item_categories)]
    ratings = [
        (f"{e.user + 1}", f"{e.item + 1}", e.value if e.value is not None else 3.0, int(e.ts // DAY * DAY))
        for e in dataset.events
    ]
    movies = [(f"{i + 1}", f"Movie {i + 1} (2001)", genres[i]) for i in range(len(genres))]
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        ratings = [ratings[i] for i in rng.permutation(len(ratings))]
        movies = [movies[i] for i in rng.permutation(len(movies))]
    folder.mkdir()
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{m},{t},{g}\n" for m, t, g in movies))
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in ratings)
    )
    return folder


def catalogue_clear() -> None:
    """Everything an import writes, receipts included (else the next import's events are duplicates of these)."""
    for model in (Interaction, EventReceipt, UserItemFirstSeen, PendingFold, UserFeatures, ItemFeatures, EndUser, Item):
        model.objects.all().delete()


def rounded(result: dict) -> dict:
    """Every number of the metrics and baselines, to 4 decimals."""
    return {name: {key: round(value, 4) for key, value in sorted(numbers.items())} for name, numbers in result.items()}


def train_in_process() -> dict:
    result = model_train(output_dir=None, log=event_log_load(), params=PARAMS, progress=None)
    return rounded({"model": result.metrics, **result.baselines})


@pytest.mark.django_db
def test_a_shuffled_import_under_other_keys_gives_the_same_metrics_to_four_decimals(tmp_path):
    movielens_import(path=movielens_copy_write(tmp_path / "sorted", shuffle_seed=None), progress=False)
    first_keys = sorted(EndUser.objects.values_list("external_id", "pk"))
    first = train_in_process()
    catalogue_clear()
    rng = np.random.default_rng(11)  # users and items known beforehand (from the API), created in another order
    EndUser.objects.bulk_create([EndUser(external_id=external_id) for external_id, _ in rng.permutation(first_keys)])
    Item.objects.bulk_create([Item(external_id=f"{i}") for i in rng.permutation(np.arange(1, 91)).tolist()])
    movielens_import(path=movielens_copy_write(tmp_path / "shuffled", shuffle_seed=7), progress=False)
    second_keys = sorted(EndUser.objects.values_list("external_id", "pk"))
    assert [pk for _, pk in first_keys] != [pk for _, pk in second_keys]  # other keys, in another order
    assert np.argsort([pk for _, pk in first_keys]).tolist() != np.argsort([pk for _, pk in second_keys]).tolist()
    assert train_in_process() == first


def command_in_subprocess(args: list[str], *, hash_seed: str) -> str:
    completed = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=process_env(PYTHONHASHSEED=hash_seed),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_import_and_training_in_processes_with_different_hash_seeds_give_the_same_metrics(tmp_path):
    folder = movielens_copy_write(tmp_path / "data", shuffle_seed=3)
    results = []
    for hash_seed in ("1", "2"):
        catalogue_clear()
        command_in_subprocess(["import_movielens", str(folder), "--no-progress"], hash_seed=hash_seed)
        output = command_in_subprocess(
            ["train", "--json", "--no-register", "--threads", "1", "--output", str(tmp_path / f"model-{hash_seed}")],
            hash_seed=hash_seed,
        )
        summary = json.loads(output.strip().splitlines()[-1])
        results.append(rounded({"model": summary["metrics"], **summary["baselines"]}))
    assert results[0] == results[1]
