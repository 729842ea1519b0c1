from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from recommendations.services.movielens import movielens_import
from recsite.errors import ApplicationError


class Command(BaseCommand):
    help = "Import a MovieLens directory (100K, 1M or CSV layout, detected from its files); repeating it adds nothing."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args, path, no_progress, **options):
        try:
            report = movielens_import(path=path, progress=not no_progress)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        for example in report.invalid_examples:
            self.stderr.write(f"Skipped {example}")
        self.stdout.write(
            f"Imported {path} ({report.layout} layout): "
            f"items {report.items_created} created, {report.items_updated} updated; "
            f"users {report.users_created} created; "
            f"events {report.events_imported} imported, {report.duplicates_skipped} duplicates skipped; "
            f"{report.invalid_lines} invalid lines skipped."
        )
