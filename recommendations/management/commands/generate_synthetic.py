from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from recommendations.services.synthetic import synthetic_dataset_write
from recsite.errors import ApplicationError


class Command(BaseCommand):
    help = (
        "Write a synthetic MovieLens-like dataset (ratings.csv, movies.csv) with a drift point, "
        "for import_movielens. The same arguments and seed give the same files."
    )

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, required=True)
        parser.add_argument("--items", type=int, required=True)
        parser.add_argument("--events", type=int, required=True)
        parser.add_argument("--drift-at", type=float, default=0.7, help="fraction of the timeline (default 0.7)")
        parser.add_argument("--output", type=Path, required=True, help="directory, created if missing")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--start", type=date.fromisoformat, default=date(2020, 1, 1), help="YYYY-MM-DD")
        parser.add_argument("--days", type=int, default=365, help="length of the timeline")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args, users, items, events, drift_at, output, seed, start, days, no_progress, **options):
        try:
            report = synthetic_dataset_write(
                output=output,
                users=users,
                items=items,
                events=events,
                drift_at=drift_at,
                seed=seed,
                start=start,
                days=days,
                progress=not no_progress,
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"Wrote {report.events} ratings by {report.users} users of {report.items} items to {report.output} "
            f"({report.start:%Y-%m-%d} to {report.end:%Y-%m-%d}); drift at {report.drift_time:%Y-%m-%d %H:%M} UTC: "
            f"{report.drifting_users} users change tastes, {report.new_items} new items."
        )
