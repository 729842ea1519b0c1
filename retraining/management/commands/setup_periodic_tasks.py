from django.core.management.base import BaseCommand

from retraining.services.policy import policy_active
from retraining.services.schedule import periodic_tasks_setup


class Command(BaseCommand):
    help = "Create or update the beat schedule (idempotent). Default interval: the active policy's."

    def add_arguments(self, parser):
        parser.add_argument("--every-seconds", type=int, default=None)

    def handle(self, *args, every_seconds, **options):
        seconds = every_seconds or policy_active().check_interval_minutes * 60
        for task in periodic_tasks_setup(check_every_seconds=seconds):
            self.stdout.write(f"periodic task '{task.name}' every {task.interval.every}s")
