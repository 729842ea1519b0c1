"""The local artifact storage (STORAGES["artifacts"] when ARTIFACT_STORAGE=local, the default): Django's
FileSystemStorage over settings.MODEL_STORE, with the guarantees artifacts need and its own `_save` lacks — a
file is written under a temporary name, fsynced and hard-linked to its name, so a reader sees either nothing
or the whole file, and an existing file is never overwritten. Object storage (S3) gives both by itself: an
object becomes visible only once its upload completes."""

import os
import uuid
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage


class LocalArtifactStorage(FileSystemStorage):
    @property
    def base_location(self):
        # Read on every use, not cached: MODEL_STORE is the store's folder whenever it is asked (tests move it).
        return self._value_or_setting(self._location, str(settings.MODEL_STORE))

    @property
    def location(self):
        return os.path.abspath(self.base_location)

    def _save(self, name, content):
        final = Path(self.path(name))
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.writelines(content.chunks())
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, final)  # FileExistsError if `final` appeared meanwhile: never overwrite
            directory_fsync(final.parent)
        finally:
            temporary.unlink(missing_ok=True)
        return str(name).replace("\\", "/")


def directory_fsync(path: Path) -> None:
    """Make a rename or link in `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
