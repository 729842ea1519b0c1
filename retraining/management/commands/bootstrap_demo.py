from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from retraining.services.demo import demo_credentials_path, demo_setup


class Command(BaseCommand):
    help = (
        "Prepare a demo installation: load a synthetic dataset when the database is empty, set up the beat "
        "schedule, keep a demo admin login and API key (reused on the next run while they work, kept in "
        "var/demo_credentials.json, owner-only) and queue a first training run."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dataset", type=Path, default=None, help="a MovieLens directory instead of synthetic data"
        )
        parser.add_argument("--no-train", action="store_true")

    def handle(self, *args, dataset, no_train, **options):
        setup = demo_setup(dataset=dataset, train=not no_train)
        host = f"http://127.0.0.1:{settings.DEMO_PORT}"
        if setup.loaded_events:
            self.stdout.write(f"Loaded a demo catalogue and {setup.loaded_events:,} events.")
        for replacement in setup.replaced:
            self.stdout.write(self.style.WARNING(replacement))
        if setup.reused:
            self.stdout.write(f"Reusing the demo login and API key kept in {demo_credentials_path()}.")
        if setup.training_run_id:
            self.stdout.write(f"Queued training run {setup.training_run_id}; the worker trains v1 once it starts.")
        self.stdout.write(
            f"\n  Admin:    {host}/admin/   login {setup.admin_username} / {setup.admin_password}\n"
            f"  API docs: {host}/api/docs/\n"
            f"  Try:      curl -H 'Authorization: Api-Key {setup.api_key}' {host}/api/v1/users/1/recommendations\n"
            f"  API key (ingest, serve, admin):\n"
        )
        self.stdout.write(setup.api_key)
