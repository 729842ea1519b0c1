import time

from django.core.management.base import BaseCommand, CommandError

from recsite.errors import ApplicationError
from retraining.models import IN_FLIGHT
from retraining.services.runs import retrain_request


class Command(BaseCommand):
    help = "Start a training run now (manual trigger); with --wait, follow it until it finishes."

    def add_arguments(self, parser):
        parser.add_argument("--wait", action="store_true")
        parser.add_argument("--timeout", type=float, default=3600)
        parser.add_argument("--actor", default="cli")

    def handle(self, *args, wait, timeout, actor, **options):
        try:
            run = retrain_request(requested_by=actor)
        except ApplicationError as exc:  # a run in flight, or the broker down
            raise CommandError(f"{exc.message} (run {exc.extra.get('run_id')})") from exc
        self.stdout.write(f"run {run.pk} queued")
        if not wait:
            return
        deadline, shown = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            run.refresh_from_db()
            for line in run.log[shown:]:
                self.stderr.write(line)
            shown = len(run.log)
            if run.status not in IN_FLIGHT:
                break
            time.sleep(1)
        else:
            raise CommandError(f"run {run.pk} still {run.status} after {timeout:.0f}s")
        version = f", version v{run.model_version.version}" if run.model_version else ""
        self.stdout.write(f"run {run.pk} {run.status}{version}")
        for reason in run.gate.get("reasons", []):
            self.stdout.write(f"  gate: {reason}")
        if run.status == "failed":
            raise CommandError(run.error)
