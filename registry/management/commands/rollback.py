from django.core.management.base import BaseCommand, CommandError

from recsite.errors import ApplicationError
from registry.services import model_version_rollback


class Command(BaseCommand):
    help = "Point the champion back at the previous champion, or at VERSION (audited)."

    def add_arguments(self, parser):
        parser.add_argument("version", type=int, nargs="?")
        parser.add_argument("--reason", default="")
        parser.add_argument("--actor", default="cli")

    def handle(self, *args, version, reason, actor, **options):
        try:
            change = model_version_rollback(actor=actor, reason=reason, version=version)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"champion: {change.from_version} -> {change.to_version}")
