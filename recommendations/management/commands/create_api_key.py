from django.core.management.base import BaseCommand, CommandError

from recommendations.services.api_keys import api_key_create
from recsite.errors import ApplicationError


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, alone on the last line of stdout."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--scopes", default="ingest,serve", help="comma-separated: ingest, serve, admin")

    def handle(self, *args, name, scopes, **options):
        try:
            api_key, secret = api_key_create(name=name, scopes=[s.strip() for s in scopes.split(",") if s.strip()])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"Created API key '{api_key.name}' (prefix {api_key.prefix}) with scopes {', '.join(api_key.scopes)}."
        )
        self.stdout.write(secret)
