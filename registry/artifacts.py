"""The artifact store: one immutable, checksummed file per model version in the Django storage
STORAGES["artifacts"] — a folder (settings.MODEL_STORE) by default, S3-compatible object storage when
ARTIFACT_STORAGE=s3, so that web processes on several hosts load from one store.

A model is a directory of files (LightGBM text models, a .npz matrix, a JSON manifest). It is stored as
an uncompressed tar, checksummed before it leaves this host; the storage makes it visible whole or not at
all (registry.storage.LocalArtifactStorage: temporary name, fsync, link; S3: an object exists once its upload
completes). A version records where its artifact is: an absolute path for the local storage (as rows written
before the storage API did), the object's name for a remote one. Reading verifies size and sha256 before
anything is parsed and returns the members as bytes (nothing is extracted to disk, nothing is unpickled); a
remote artifact is first copied to a local cache keyed by its sha256 (settings.ARTIFACT_CACHE_DIR), and the
copy is verified on every read like the original."""

import hashlib
import io
import logging
import os
import re
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages

from recsite.errors import ApplicationError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
MANIFEST_FILE = "manifest.json"  # the JSON manifest every artifact holds (ARCHITECTURE.md)
STORAGE_ALIAS = "artifacts"
SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(ApplicationError):
    status_code = 422
    code = "artifact_invalid"


@dataclass(frozen=True)
class StoredArtifact:
    path: str
    size: int
    sha256: str


def artifact_storage() -> Storage:
    return storages[STORAGE_ALIAS]


def artifact_store(*, source_dir: Path, name: str) -> StoredArtifact:
    """Pack the regular files of `source_dir` into <name>.tar in the artifact storage; refuses to overwrite."""
    storage, target = artifact_storage(), f"{name}.tar"
    if storage.exists(target):
        raise ArtifactError(f"Artifact {target} already exists; artifacts are never overwritten.")
    scratch = Path(settings.MODEL_STORE)  # this host's disk for models, not /tmp (possibly a small tmpfs)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=scratch) as handle:
        _pack(Path(source_dir), handle)
        size, digest = _digest(handle)
        try:
            saved = storage.save(target, File(handle, name=target))
        except FileExistsError:
            saved = None
    if saved != target:  # another writer took the name between our check and our write
        if saved is not None:
            storage.delete(saved)
        raise ArtifactError(f"Artifact {target} already exists; artifacts are never overwritten.")
    return StoredArtifact(path=_location(storage, saved), size=size, sha256=digest)


def artifact_read(*, path: str, size: int | None, sha256: str) -> dict[str, bytes]:
    """The files of a stored artifact, after checking it is whole and untouched."""
    name = Path(path).name
    data = _artifact_bytes(path=path, size=size, sha256=sha256)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    except tarfile.TarError as exc:
        raise ArtifactError(f"Artifact {name} is not a readable archive: {exc}") from exc


def artifact_present_check(*, path: str, sha256: str) -> None:
    """A cheap check that an artifact is there to read (it is verified when read): raises ArtifactError if
    the version has no artifact on record or its file is gone from the store."""
    if not path or not SHA256.fullmatch(sha256 or ""):
        raise ArtifactError("it has no artifact on record")
    if os.path.isabs(path):
        present = Path(path).is_file()
    else:
        try:
            present = (artifact_cache_dir() / f"{sha256}.tar").is_file() or artifact_storage().exists(path)
        except Exception as exc:  # the backend's own errors: network, credentials, permissions
            raise ArtifactError(f"its artifact {path} could not be looked up ({type(exc).__name__}: {exc})") from exc
    if not present:
        raise ArtifactError(f"its artifact {Path(path).name} is missing from the artifact store")


def artifact_local_file(*, path: str, size: int | None, sha256: str) -> Path:
    """A verified file of a stored artifact on this host: the stored file itself (local store) or this host's
    cached copy of the remote object (for uploading it elsewhere, e.g. to MLflow)."""
    _artifact_bytes(path=path, size=size, sha256=sha256)
    return Path(path) if os.path.isabs(path) else artifact_cache_dir() / f"{sha256}.tar"


def _pack(source_dir: Path, handle) -> None:
    with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(p for p in source_dir.iterdir() if p.is_file()):
            info = tarfile.TarInfo(path.name)
            info.size = path.stat().st_size
            info.mtime = 0
            with open(path, "rb") as member:
                archive.addfile(info, member)
    handle.flush()


def _digest(handle) -> tuple[int, str]:
    handle.seek(0)
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    handle.seek(0)
    return size, digest.hexdigest()


def _location(storage: Storage, name: str) -> str:
    try:
        return storage.path(name)
    except NotImplementedError:  # not on this host's filesystem: the name is the location
        return name


def _artifact_bytes(*, path: str, size: int | None, sha256: str) -> bytes:
    if os.path.isabs(path):
        location = Path(path)
        if not location.is_file():
            raise ArtifactError(f"Artifact {location} is missing.")
        return _verified(location.read_bytes(), name=location.name, size=size, sha256=sha256)
    if not SHA256.fullmatch(sha256 or ""):
        raise ArtifactError(f"Artifact {path} has no valid sha256 on record.")
    cached = artifact_cache_dir() / f"{sha256}.tar"
    try:
        data = _verified(cached.read_bytes(), name=path, size=size, sha256=sha256)
    except FileNotFoundError:
        pass
    except ArtifactError:
        logger.warning("discarding the damaged cached copy %s of artifact %s", cached, path)
        cached.unlink(missing_ok=True)
    else:
        os.utime(cached)  # recently used: pruned last
        return data
    data = _verified(_download(path), name=path, size=size, sha256=sha256)
    _cache_write(cached, data)
    return data


def _verified(data: bytes, *, name: str, size: int | None, sha256: str) -> bytes:
    if size is not None and len(data) != size:
        raise ArtifactError(f"Artifact {name} has {len(data)} bytes, expected {size}: truncated or replaced.")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ArtifactError(f"Artifact {name} fails its sha256 check (expected {sha256[:12]}…, got {digest[:12]}…).")
    return data


def _download(name: str) -> bytes:
    try:
        with artifact_storage().open(name, "rb") as handle:
            return handle.read()
    except FileNotFoundError as exc:
        raise ArtifactError(f"Artifact {name} is missing from the artifact store.") from exc
    except Exception as exc:  # the backend's own errors: network, credentials, permissions
        raise ArtifactError(
            f"Artifact {name} could not be read from the artifact store ({type(exc).__name__}: {exc})."
        ) from exc


def artifact_cache_dir() -> Path:
    """This host's copies of remote artifacts (a cache: safe to delete, re-fetched and re-verified on use)."""
    return Path(settings.ARTIFACT_CACHE_DIR or Path(settings.MODEL_STORE) / "cache")


def _cache_write(path: Path, data: bytes) -> None:
    """Write a verified copy under a temporary name and rename it (no fsync: every read verifies the copy, and
    a lost one is fetched again), then drop the least recently used copies beyond ARTIFACT_CACHE_KEEP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    copies = sorted(path.parent.glob("*.tar"), key=_mtime, reverse=True)
    for stale in copies[settings.ARTIFACT_CACHE_KEEP :]:
        stale.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # pruned by another process meanwhile
        return 0.0
