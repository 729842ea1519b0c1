from pathlib import Path

from django.core.management.base import BaseCommand

from registry.selectors import model_history_markdown


class Command(BaseCommand):
    help = "Write the version history as a Markdown table (default MODEL_COMPARISON.md)."

    def add_arguments(self, parser):
        parser.add_argument("--output", default="MODEL_COMPARISON.md")

    def handle(self, *args, output, **options):
        path = Path(output)
        text = "# Model versions\n\nNewest first; the active version is in bold.\n\n" + model_history_markdown()
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)
        self.stdout.write(f"wrote {path.resolve()}")
