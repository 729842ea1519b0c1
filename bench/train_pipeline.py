"""Training pipeline benchmark: quality against the baselines, time and peak memory per stage.

For each dataset it creates a PostgreSQL database of its own, migrates it, imports the events, runs
`manage.py train --json` in a child process (so the peak memory is that run's alone), prints a table and
drops the database.

    .venv/bin/python bench/train_pipeline.py                       # ml-latest-small, synthetic 500k and 1M
    .venv/bin/python bench/train_pipeline.py --datasets ml-latest-small
    .venv/bin/python bench/train_pipeline.py --load-only ml-latest-small --database helper_training_dev

Datasets are imported with `import_movielens` / `generate_synthetic` when those commands exist; otherwise
with the small loaders below (MovieLens CSV; a seeded synthetic generator with latent tastes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import BENCH_SECRET_KEY

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
os.environ.setdefault("SECRET_KEY", BENCH_SECRET_KEY)  # here and in the manage.py processes started below
MOVIELENS_SMALL = Path(os.environ.get("MOVIELENS_SMALL", ROOT.parent / "shared" / "datasets" / "ml-latest-small"))
DATASETS = {
    "ml-latest-small": {"kind": "movielens", "path": MOVIELENS_SMALL},
    "synthetic-500k": {"kind": "synthetic", "users": 5_000, "items": 4_000, "events": 500_000},
    "synthetic-1M": {"kind": "synthetic", "users": 10_000, "items": 6_000, "events": 1_000_000},
}


def _django_setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsite.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def movielens_load(path: Path) -> int:
    """Items with genres as categories, users, and one rating event per CSV row."""
    from recommendations.models import EndUser, Interaction, Item

    with open(path / "movies.csv", newline="", encoding="utf-8") as handle:
        Item.objects.bulk_create(
            [
                Item(
                    external_id=row["movieId"],
                    title=row["title"][:500],
                    categories=[g for g in row["genres"].split("|") if g != "(no genres listed)"],
                )
                for row in csv.DictReader(handle)
            ],
            batch_size=5000,
        )
    items = dict(Item.objects.values_list("external_id", "pk"))
    with open(path / "ratings.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    EndUser.objects.bulk_create(
        [EndUser(external_id=u) for u in sorted({r["userId"] for r in rows}, key=int)], batch_size=5000
    )
    users = dict(EndUser.objects.values_list("external_id", "pk"))
    Interaction.objects.bulk_create(
        (
            Interaction(
                user_id=users[r["userId"]],
                item_id=items[r["movieId"]],
                event_type="rating",
                value=float(r["rating"]),
                timestamp=datetime.fromtimestamp(int(r["timestamp"]), tz=UTC),
            )
            for r in rows
        ),
        batch_size=10_000,
    )
    return len(rows)


def synthetic_load(*, users: int, items: int, events: int, seed: int = 7) -> int:
    """Users with latent tastes over genre-like clusters; popularity is long-tailed; ratings follow taste."""
    import numpy as np

    from recommendations.models import EndUser, Interaction, Item

    rng = np.random.default_rng(seed)
    n_genres = 20
    item_genre = rng.integers(0, n_genres, items)
    item_pop = rng.pareto(1.2, items) + 1.0
    Item.objects.bulk_create(
        [Item(external_id=f"i{i}", categories=[f"g{item_genre[i]}"]) for i in range(items)], batch_size=10_000
    )
    EndUser.objects.bulk_create([EndUser(external_id=f"u{u}") for u in range(users)], batch_size=10_000)
    item_pk = np.array(Item.objects.order_by("pk").values_list("pk", flat=True))
    user_pk = np.array(EndUser.objects.order_by("pk").values_list("pk", flat=True))
    activity = rng.pareto(1.5, users) + 1.0
    per_user = np.maximum(3, np.round(activity / activity.sum() * events)).astype(int)
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    types = np.array(["view", "click", "rating", "like", "purchase"])
    written = 0
    batch: list = []
    for u in range(users):
        taste = rng.dirichlet(np.full(n_genres, 0.3))
        weights = item_pop * taste[item_genre]
        n = min(int(per_user[u]), items // 2)
        chosen = rng.choice(items, size=n, replace=False, p=weights / weights.sum())
        times = np.sort(start + rng.uniform(0, 180 * 86400, n))
        kinds = rng.choice(5, size=n, p=[0.35, 0.2, 0.3, 0.1, 0.05])
        affinity = taste[item_genre[chosen]] * n_genres
        ratings = np.clip(np.round((2.5 + affinity + rng.normal(0, 0.8, n)) * 2) / 2, 0.5, 5.0)
        for i, t, kind, rating in zip(chosen, times, kinds, ratings):
            batch.append(
                Interaction(
                    user_id=int(user_pk[u]),
                    item_id=int(item_pk[i]),
                    event_type=str(types[kind]),
                    value=float(rating) if kind == 2 else None,
                    timestamp=datetime.fromtimestamp(float(t), tz=UTC),
                )
            )
        if len(batch) >= 20_000:
            Interaction.objects.bulk_create(batch, batch_size=10_000)
            written += len(batch)
            batch = []
        if written >= events:
            break
    Interaction.objects.bulk_create(batch, batch_size=10_000)
    return written + len(batch)


def _psql(sql: str) -> None:
    subprocess.run(["psql", f"{PG}/postgres", "-q", "-c", sql], check=True, capture_output=True)


def _has_command(name: str) -> bool:
    return any((ROOT / app / "management" / "commands" / f"{name}.py").exists() for app in ("recommendations",))


def _manage(database: str, *args: str) -> None:
    env = dict(os.environ, DATABASE_URL=f"{PG}/{database}")
    subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def dataset_load(name: str, database: str) -> float:
    """Migrate and fill `database` (the project's import commands when present, else the loaders here);
    returns the seconds it took."""
    started = time.perf_counter()
    spec = DATASETS[name]
    if _has_command("import_movielens") and (spec["kind"] == "movielens" or _has_command("generate_synthetic")):
        _manage(database, "migrate", "--verbosity", "0")
        path = spec.get("path")
        if spec["kind"] == "synthetic":
            path = ROOT / "var" / "bench" / name
            _manage(
                database,
                "generate_synthetic",
                "--users",
                str(spec["users"]),
                "--items",
                str(spec["items"]),
                "--events",
                str(spec["events"]),
                "--output",
                str(path),
                "--seed",
                "1",
            )
        _manage(database, "import_movielens", str(path))
    else:
        subprocess.run([PYTHON, __file__, "--load-only", name, "--database", database], check=True)
    return time.perf_counter() - started


def pipeline_run(database: str) -> dict:
    env = dict(os.environ, DATABASE_URL=f"{PG}/{database}")
    output = ROOT / "var" / "bench" / database
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, "manage.py", "train", "--json", "--output", str(output)],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report_print(name: str, result: dict, load_s: float) -> None:
    m, base, d = result["metrics"], result["baselines"], result["dataset"]
    cf_name = next(k for k in base if k != "popularity")
    pop, cf = base["popularity"]["ndcg@10"], base[cf_name]["ndcg@10"]
    print(
        f"\n## {name}: {d['events']} events, {d['users']} users, {d['items']} items "
        f"(train {d['train_events']}, holdout {d['holdout_events']}); import {load_s:.0f} s"
    )
    print("| model | NDCG@10 | Recall@10 | Precision@10 | MAP@10 | HitRate@10 | Coverage@10 |")
    print("|---|---|---|---|---|---|---|")
    for label, row in [("LightGBM ranker", m), ("most-popular", base["popularity"]), (cf_name, base[cf_name])]:
        print(
            f"| {label} | {row['ndcg@10']:.4f} | {row['recall@10']:.4f} | {row['precision@10']:.4f} | "
            f"{row['map@10']:.4f} | {row['hit_rate@10']:.4f} | {row['coverage@10']:.4f} |"
        )
    print(
        f"ranker / most-popular: {_ratio(m['ndcg@10'], pop)}; ranker / {cf_name}: {_ratio(m['ndcg@10'], cf)}; "
        f"ranker / stronger baseline: {_ratio(m['ndcg@10'], max(pop, cf))}"
    )
    print(f"rating model: RMSE {m['rmse']:.4f}  MAE {m['mae']:.4f}  R2 {m['r2']:.4f}")
    for rating_baseline in ("bias", "global_mean"):
        row = base.get(rating_baseline)
        if row and row.get("rmse"):
            print(
                f"rating baseline {rating_baseline}: RMSE {row['rmse']:.4f}  MAE {row['mae']:.4f}  "
                f"R2 {row['r2']:.4f} (model's RMSE {m['rmse'] / row['rmse'] - 1:+.1%})"
            )
    stages = result["timings_s"]
    peaks = result.get("stage_peak_memory_mb", {})
    print("| stage | seconds | peak RSS so far (MB) |")
    print("|---|---|---|")
    for stage, seconds in stages.items():
        print(f"| {stage} | {seconds:.2f} | {peaks.get(stage, float('nan')):.0f} |")
    print(f"| total (stages) | {sum(stages.values()):.2f} | {result['peak_memory_mb']:.0f} |")
    print(
        f"`manage.py train` wall time including start-up: {result['wall_s']:.1f} s; "
        f"peak memory: {result['peak_memory_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--load-only", choices=list(DATASETS))
    parser.add_argument("--database")
    parser.add_argument("--keep", action="store_true", help="do not drop the benchmark databases")
    args = parser.parse_args()
    if args.load_only:
        _django_setup(f"{PG}/{args.database}")
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        spec = DATASETS[args.load_only]
        if spec["kind"] == "movielens":
            count = movielens_load(spec["path"])
        else:
            count = synthetic_load(users=spec["users"], items=spec["items"], events=spec["events"])
        print(f"loaded {count} events into {args.database}", file=sys.stderr)
        return
    print(
        f"# Training pipeline benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, {os.uname().machine}"
    )
    totals = {}
    for name in args.datasets:
        database = f"bench_train_{name.replace('-', '_').lower()}"
        _psql(f"DROP DATABASE IF EXISTS {database}")
        _psql(f"CREATE DATABASE {database}")
        try:
            load_s = dataset_load(name, database)
            result = pipeline_run(database)
            totals[name] = result["wall_s"]
            report_print(name, result, load_s)
        finally:
            if not args.keep:
                _psql(f"DROP DATABASE IF EXISTS {database}")
    if {"synthetic-500k", "synthetic-1M"} <= totals.keys():
        print(
            f"\ndoubling the events (500k -> 1M) multiplied the time by "
            f"{totals['synthetic-1M'] / totals['synthetic-500k']:.2f}"
        )


if __name__ == "__main__":
    main()
