"""The spool: received DICOM files, content-addressed by SHA-256, written atomically, optionally encrypted.

Why content addressing: file names must never come from raw UIDs (they are attacker-controlled and may
carry PHI-like structure), a duplicate with the same bytes lands on the same path (so no second copy), and
a different version of the same SOP Instance UID gets its own path (so both are kept). Files are hashed
while written, fsynced, then renamed into place; a crash leaves at most stray files in the dead
process's own directories under `tmp/` and `ready/`, which `sweep_tmp` removes at start-up. Files under
`objects/` are deleted only by the retention purge (`integrations/ops/retention.py`), which first marks
their index rows (`purged_marker`).

Encryption at rest (on when the spool is given a key): each object is sealed as it moves from `tmp/` into
`objects/` (format in `spool_cipher`). Digest and size stay those of the plaintext DICOM bytes, so
duplicates, conflicts and "byte-identical" keep meaning the DICOM content, and a spool may hold plaintext
files from before encryption was turned on next to sealed ones. `tmp/` holds the plaintext of an instance
only while it is being received (the receiver reads its header from there). Every reader goes through
`open_plaintext` (or `stored(...).open_binary()`), which tells the two kinds apart by their header.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import shutil
import threading
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from integrations.dicom.owned_dirs import LOCK_SUFFIX, OwnedDirectory, sweep_orphaned
from integrations.dicom.ready_files import ReadyFiles
from integrations.dicom.spool_cipher import (
    HEADER_SIZE,
    SealingWriter,
    SpoolIntegrityError,
    UnsealingReader,
    is_sealed,
)
from integrations.dicom.spool_key import SpoolKey, load_spool_key
from integrations.store.purged_paths import PURGED_PREFIX, is_purged, purged_marker

if TYPE_CHECKING:
    from integrations.dicom.audit_port import AuditLedger
    from integrations.dicom.config import DicomConfig

LOG = logging.getLogger(__name__)
_CHUNK = 1024 * 1024
INTEGRITY_FAILED = "spool.integrity_failed"
ACTOR = "veritrace-spool"
_READ_BUFFER = 64 * 1024

__all__ = [
    "PURGED_PREFIX",
    "IncomingFile",
    "Spool",
    "SpoolIntegrityError",
    "SpoolKeyUnavailable",
    "SpoolObjectPurged",
    "SpooledFile",
    "StoredObject",
    "WrittenFile",
    "is_purged",
    "open_spool",
    "purged_marker",
]


class SpoolObjectPurged(FileNotFoundError):
    """The index row says the retention purge deleted this file."""


class SpoolKeyUnavailable(OSError):
    """The file is encrypted and this process has no spool key (VERITRACE_SPOOL_KEY_FILE unset)."""


@dataclass(frozen=True)
class SpooledFile:
    """A file now in the spool: where (relative to the root), its digest and its size."""

    relative_path: str
    sha256: str
    size_bytes: int
    already_present: bool


class Spool:
    """Content-addressed file store under one root directory; sealed at rest when given a `key`.

    `audit` receives one ledger entry per file that fails authentication when read.
    """

    def __init__(
        self,
        root: Path,
        *,
        min_free_bytes: int = 0,
        fsync: bool = True,
        key: SpoolKey | None = None,
        audit: AuditLedger | None = None,
    ) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        self.key = key
        self._audit = audit
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        # Empty temp files made ahead for the SCP (`start_ready_files`); None: made when needed.
        self.ready_dir = self.root / "ready"
        self._ready: ReadyFiles | None = None
        # This process's own directory under tmp/ for writes in progress, made at the first write.
        self._scratch: OwnedDirectory | None = None
        self._scratch_lock = threading.Lock()
        self._made_dirs: set[Path] = set()
        for path in (self.root, self.objects_dir, self.tmp_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def has_room(self) -> bool:
        """False below the free-space watermark: the SCP then answers 0xA700 rather than fill the disk."""
        return shutil.disk_usage(self.root).free >= self.min_free_bytes

    def absolute(self, relative_path: str) -> Path:
        """Requires a path produced by this spool; anything escaping the root raises ValueError."""
        path = (self.root / relative_path).resolve()
        if self.root not in path.parents:
            raise ValueError(f"spool path {relative_path!r} escapes the spool root")
        return path

    def incoming(self) -> IncomingFile:
        """A temp file that hashes what is written to it: the SCP streams a data set into it."""
        if self._ready is not None:
            path, out = self._ready.take()
            return IncomingFile(path, fsync=self.fsync, out=out)
        return IncomingFile(self.scratch_path(), fsync=self.fsync)

    def scratch_path(self, suffix: str = ".part") -> Path:
        """A fresh path for a write in progress, in this process's own directory under `tmp/`.

        Owned (`owned_dirs`) so that another process starting on this spool sweeps only what crashed
        processes left: a STOW-RS upload being written by the API survives a dicom process's start.
        """
        with self._scratch_lock:
            if self._scratch is None or not self._scratch.held:
                self._scratch = OwnedDirectory(self.tmp_dir)
                weakref.finalize(self, self._scratch.release)
            directory = self._scratch.directory
        return directory / f"{uuid.uuid4().hex}{suffix}"

    def release_scratch(self) -> None:
        """Give up this process's `tmp/` directory (removed when empty); the next write makes a new one."""
        with self._scratch_lock:
            scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.release()

    def start_ready_files(self, depth: int = 4) -> None:
        """Keep `depth` empty temp files open ahead of `incoming` (the SCP's hot path; see ready_files)."""
        if self._ready is None:
            self._ready = ReadyFiles(self.ready_dir, depth)
            self._ready.start()

    def make_shard_directories(self) -> None:
        """Create all 256 `objects/xx/` directories now, before the SCP listens.

        Otherwise the first few hundred instances after a new spool each create one, and creating a
        directory cost 0.5-1.5 ms on this VM's ext4 after deletions: in the CT benchmark, on a fresh
        spool, that was a quarter of the receiving process's CPU.
        """
        made = [self._make_shard(self.objects_dir / f"{number:02x}") for number in range(256)]
        if any(made) and self.fsync:
            fsync_path(self.objects_dir)  # one sync for every new entry

    def stop_ready_files(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.close()

    def adopt(self, temp_path: Path, written: WrittenFile | None = None) -> SpooledFile:
        """Move a finished file into the spool; `written` (from `IncomingFile.finish`) skips re-hashing.

        The source is renamed when it is on the spool's filesystem, copied otherwise; either way the
        source no longer needs to exist afterwards (the caller may still try to delete it).
        """
        if written is not None:
            digest, size = written.sha256, written.size_bytes
        else:
            digest, size = _hash_file(temp_path)
        relative, target = self._object_path(digest)
        if target.exists():
            temp_path.unlink(missing_ok=True)
            return SpooledFile(relative, digest, size, already_present=True)
        if self.key is not None:
            return self._seal_file(temp_path, relative, digest, size)
        if self.fsync and written is None:
            fsync_path(temp_path)
        try:
            self._move_into_place(temp_path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with temp_path.open("rb") as source:
                return self._write_from(iter(lambda: source.read(_CHUNK), b""))
        return SpooledFile(relative, digest, size, already_present=False)

    def write_stream(self, chunks: Iterable[bytes]) -> SpooledFile:
        """Write bytes arriving in pieces (STOW-RS parts, generated SR), hashing as they are written."""
        if self.key is not None:
            return self._write_sealed(chunks)
        return self._write_from(chunks)

    def open_plaintext(self, relative_path: str) -> BinaryIO:
        """The DICOM bytes of a spooled file, plaintext or sealed alike: readable, seekable, to be closed.

        Raises `SpoolObjectPurged` for a path the retention purge marked, `FileNotFoundError` for a missing
        file, `SpoolKeyUnavailable` for a sealed file without a key, and `SpoolIntegrityError` (audited)
        for a sealed file that fails authentication. Memory stays at about one chunk whatever the size.
        """
        if is_purged(relative_path):
            raise SpoolObjectPurged(f"spool object {relative_path.removeprefix(PURGED_PREFIX)} was purged")
        raw = self.absolute(relative_path).open("rb")
        try:
            if not is_sealed(raw.read(HEADER_SIZE)):
                raw.seek(0)
                return raw
            if self.key is None:
                raise SpoolKeyUnavailable(
                    f"spool object {relative_path} is encrypted and no spool key is configured"
                )
            reader = UnsealingReader(
                raw,
                self.key,
                label=relative_path,
                on_failure=lambda problem: self._audit_integrity_failure(relative_path, problem),
            )
        except BaseException:
            raw.close()
            raise
        return io.BufferedReader(reader, buffer_size=_READ_BUFFER)

    def stored(self, relative_path: str) -> StoredObject:
        """A handle the model and tools read through (`model.dicom_source.StoredDicom`)."""
        return StoredObject(self, relative_path)

    def is_encrypted(self, relative_path: str) -> bool:
        """Whether the file on disk is sealed (for tests and operators; readers never need to ask)."""
        with self.absolute(relative_path).open("rb") as raw:
            return is_sealed(raw.read(HEADER_SIZE))

    def remove(self, relative_path: str) -> int | None:
        """Delete a spooled file (retention only); returns the bytes freed on disk, None if it was gone."""
        path = self.absolute(relative_path.removeprefix(PURGED_PREFIX))
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return None
        return size

    def _audit_integrity_failure(self, relative_path: str, problem: str) -> None:
        LOG.error("spool object %s failed its integrity check: %s", relative_path, problem)
        if self._audit is None:
            return
        try:
            self._audit.append(INTEGRITY_FAILED, ACTOR, {"spool_path": relative_path, "problem": problem})
        except Exception as exc:  # the read still fails; an unwritable ledger must not hide that
            LOG.error("could not audit a spool integrity failure (%s)", type(exc).__name__)

    def _seal_file(self, source: Path, relative: str, digest: str, size: int) -> SpooledFile:
        """Seal a finished plaintext temp file into `target`, checking it still has the digest it had."""
        with source.open("rb") as plaintext:
            spooled = self._write_sealed(iter(lambda: plaintext.read(_CHUNK), b""))
        source.unlink(missing_ok=True)
        if (spooled.sha256, spooled.size_bytes) != (digest, size):
            # The temp file changed between receipt and sealing: never index bytes we did not receive.
            if not spooled.already_present:
                self.remove(spooled.relative_path)
            raise SpoolIntegrityError(f"spool temp file changed before sealing (expected {relative})")
        return spooled

    def _write_sealed(self, chunks: Iterable[bytes]) -> SpooledFile:
        temp = self.scratch_path()
        assert self.key is not None
        hasher = hashlib.sha256()
        size = 0
        try:
            with temp.open("wb") as out:
                sealer = SealingWriter(out, self.key)
                for chunk in chunks:
                    hasher.update(chunk)
                    sealer.write(chunk)
                    size += len(chunk)
                sealer.finish()
                _flush(out, self.fsync)
            digest = hasher.hexdigest()
            relative, target = self._object_path(digest)
            if target.exists():
                return SpooledFile(relative, digest, size, already_present=True)
            self._move_into_place(temp, target)
            return SpooledFile(relative, digest, size, already_present=False)
        finally:
            temp.unlink(missing_ok=True)

    def unfinished_writes(self) -> list[Path]:
        """Files of writes that did not finish: any file under `tmp/` but the owners' locks, and ready
        files written to. Empty files under `ready/` are the SCP's files made ahead, not writes.
        """
        found = [path for path in self.tmp_dir.rglob("*") if path.is_file() and path.suffix != LOCK_SUFFIX]
        if self.ready_dir.is_dir():
            found += [path for path in self.ready_dir.rglob("*.part") if path.stat().st_size]
        return found

    def sweep_tmp(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many were removed.

        Under `tmp/` and `ready/` only the files of processes that are gone: a live process sharing the
        spool keeps its own (see `owned_dirs`). Loose files directly under `tmp/` are always removed.
        """
        return sweep_orphaned(self.tmp_dir) + sweep_orphaned(self.ready_dir)

    def _write_from(self, chunks: Iterable[bytes]) -> SpooledFile:
        temp = self.scratch_path()
        hasher = hashlib.sha256()
        size = 0
        try:
            with temp.open("wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                _flush(out, self.fsync)
            digest = hasher.hexdigest()
            relative, target = self._object_path(digest)
            if target.exists():
                return SpooledFile(relative, digest, size, already_present=True)
            self._move_into_place(temp, target)
            return SpooledFile(relative, digest, size, already_present=False)
        finally:
            temp.unlink(missing_ok=True)

    def _move_into_place(self, temp: Path, target: Path) -> None:
        """Rename a finished file to its spool path; with fsync, the directory entry is made durable too.

        An fsynced file is not enough: until its directory is synced, a power cut can lose the rename
        and leave an acknowledged instance without a name (POSIX; ext4 and XFS happen to order it, btrfs
        and network filesystems need not).
        """
        os.replace(temp, target)
        if self.fsync:
            fsync_path(target.parent)

    def _object_path(self, digest: str) -> tuple[str, Path]:
        # One level of 256 directories: a second level (65,536) cost a directory creation per instance
        # for the first tens of thousands of instances, at ~0.7 ms each on a journaled disk. Paths are
        # stored per instance, so files written under the older two-level layout still resolve.
        relative = f"objects/{digest[:2]}/{digest}.dcm"
        target = self.root / relative
        if self._make_shard(target.parent) and self.fsync:
            fsync_path(self.objects_dir)  # the new directory's own entry
        return relative, target

    def _make_shard(self, shard: Path) -> bool:
        """Make a shard directory unless this spool knows it exists; True if it was made now."""
        if shard in self._made_dirs:
            return False
        made = not shard.is_dir()
        if made:
            shard.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._made_dirs.add(shard)
        return made


@dataclass(frozen=True)
class StoredObject:
    """One spooled file as readers see it: a name for messages and the plaintext on `open_binary()`."""

    spool: Spool
    relative_path: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.relative_path.removeprefix(PURGED_PREFIX)).name

    def open_binary(self) -> BinaryIO:
        return self.spool.open_plaintext(self.relative_path)

    def exists(self) -> bool:
        if is_purged(self.relative_path):
            return False
        try:
            return self.spool.absolute(self.relative_path).is_file()
        except ValueError:
            return False


def open_spool(config: DicomConfig, *, audit: AuditLedger | None = None) -> Spool:
    """The spool `config` describes, with its key when `spool_key_file` is set (a bad key file raises)."""
    key = load_spool_key(config.spool_key_file) if config.spool_key_file is not None else None
    return Spool(
        config.spool_dir, min_free_bytes=config.min_free_bytes, fsync=config.fsync, key=key, audit=audit
    )


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    sha256: str
    size_bytes: int


class IncomingFile:
    """Write-once temp file with a running SHA-256, so a received data set is read from the wire once.

    `finish` flushes (and fsyncs when the spool does) and returns the digest; `discard` removes the file.
    A crash leaves the `.part` file under `tmp/`, which `Spool.sweep_tmp` removes at the next start.
    """

    def __init__(self, path: Path, *, fsync: bool, out: BinaryIO | None = None) -> None:
        """`out`: the file at `path` already open for writing (a ready file), else it is created."""
        self.path = path
        self._fsync = fsync
        self._hasher = hashlib.sha256()
        self._size = 0
        self._out: BinaryIO | None = out if out is not None else path.open("wb")

    def write(self, data: bytes | memoryview) -> None:
        if self._out is None:
            raise ValueError("write to a finished or discarded incoming file")
        self._out.write(data)
        self._hasher.update(data)
        self._size += len(data)

    def finish(self) -> WrittenFile:
        if self._out is None:
            raise ValueError("incoming file already finished or discarded")
        out, self._out = self._out, None
        try:
            _flush(out, self._fsync)
        finally:
            out.close()
        return WrittenFile(self.path, self._hasher.hexdigest(), self._size)

    def discard(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
                out.close()
        self.path.unlink(missing_ok=True)


def _hash_file(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flush(out: BinaryIO, fsync: bool) -> None:
    out.flush()
    if fsync:
        os.fsync(out.fileno())
