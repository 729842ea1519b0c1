from django.core.management.base import BaseCommand, CommandError

from recsite.errors import ApplicationError
from registry.services import model_version_promote


class Command(BaseCommand):
    help = "Make VERSION the champion (audited)."

    def add_arguments(self, parser):
        parser.add_argument("version", type=int)
        parser.add_argument("--reason", default="")
        parser.add_argument("--actor", default="cli")

    def handle(self, *args, version, reason, actor, **options):
        try:
            change = model_version_promote(version=version, actor=actor, reason=reason)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"champion: {change.from_version or 'none'} -> {change.to_version}")
