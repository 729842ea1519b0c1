"""The artifact store: one immutable, checksummed file per model version under settings.MODEL_STORE.

A model is a directory of files (LightGBM text models, a .npz matrix, a JSON manifest). It is stored as
an uncompressed tar written to a temporary name, fsynced, checksummed and renamed into place, so a
reader sees either nothing or the whole file. Loading verifies size and sha256 before anything is
parsed and returns the members as bytes (nothing is extracted to disk, nothing is unpickled)."""

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from recsite.errors import ApplicationError

CHUNK = 1 << 20
MANIFEST_FILE = "manifest.json"  # the JSON manifest every artifact holds (ARCHITECTURE.md)


class ArtifactError(ApplicationError):
    status_code = 422
    code = "artifact_invalid"


@dataclass(frozen=True)
class StoredArtifact:
    path: str
    size: int
    sha256: str


def artifact_store(*, source_dir: Path, name: str) -> StoredArtifact:
    """Pack the regular files of `source_dir` into MODEL_STORE/<name>.tar; refuses to overwrite."""
    store = Path(settings.MODEL_STORE)
    store.mkdir(parents=True, exist_ok=True)
    final = store / f"{name}.tar"
    if final.exists():
        raise ArtifactError(f"Artifact {final.name} already exists; artifacts are never overwritten.")
    temporary = store / f".{name}.tar.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as archive:
                for path in sorted(p for p in Path(source_dir).iterdir() if p.is_file()):
                    info = tarfile.TarInfo(path.name)
                    info.size = path.stat().st_size
                    info.mtime = 0
                    with open(path, "rb") as member:
                        archive.addfile(info, member)
            handle.flush()
            os.fsync(handle.fileno())
        size, digest = _digest(temporary)
        os.link(temporary, final)  # fails if `final` appeared meanwhile: never overwrite
        _fsync_directory(store)
    finally:
        temporary.unlink(missing_ok=True)
    return StoredArtifact(path=str(final), size=size, sha256=digest)


def artifact_read(*, path: str, size: int | None, sha256: str) -> dict[str, bytes]:
    """The files of a stored artifact, after checking it is whole and untouched."""
    location = Path(path)
    if not location.is_file():
        raise ArtifactError(f"Artifact {location} is missing.")
    data = location.read_bytes()
    if size is not None and len(data) != size:
        raise ArtifactError(f"Artifact {location.name} has {len(data)} bytes, expected {size}: truncated or replaced.")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ArtifactError(f"Artifact {location.name} fails its sha256 check (expected {sha256[:12]}…, got {digest[:12]}…).")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    except tarfile.TarError as exc:
        raise ArtifactError(f"Artifact {location.name} is not a readable archive: {exc}") from exc


def _digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
