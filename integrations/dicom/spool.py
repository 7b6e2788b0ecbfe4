"""The spool: received DICOM files, content-addressed by SHA-256, written atomically.

Why content addressing: file names must never come from raw UIDs (they are attacker-controlled and may
carry PHI-like structure), a duplicate with the same bytes lands on the same path (so no second copy), and
a different version of the same SOP Instance UID gets its own path (so both are kept). Files are hashed
while written, fsynced, then renamed into place; a crash leaves at most a stray file under `tmp/`, which
`sweep_tmp` removes at start-up. Nothing under `objects/` is ever deleted by the gateway.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class SpooledFile:
    """A file now in the spool: where (relative to the root), its digest and its size."""

    relative_path: str
    sha256: str
    size_bytes: int
    already_present: bool


class Spool:
    """Content-addressed file store under one root directory."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
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
        """A file under `tmp/` that hashes what is written to it: the SCP streams a data set into it."""
        return IncomingFile(self.tmp_dir / f"{uuid.uuid4().hex}.part", fsync=self.fsync)

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
        if self.fsync and written is None:
            _fsync_path(temp_path)
        try:
            os.replace(temp_path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with temp_path.open("rb") as source:
                return self._write_from(iter(lambda: source.read(_CHUNK), b""))
        return SpooledFile(relative, digest, size, already_present=False)

    def write_stream(self, chunks: Iterable[bytes]) -> SpooledFile:
        """Write bytes arriving in pieces (STOW-RS parts, generated SR), hashing as they are written."""
        return self._write_from(chunks)

    def sweep_tmp(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many were removed."""
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def _write_from(self, chunks: Iterable[bytes]) -> SpooledFile:
        temp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
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
            os.replace(temp, target)
            return SpooledFile(relative, digest, size, already_present=False)
        finally:
            temp.unlink(missing_ok=True)

    def _object_path(self, digest: str) -> tuple[str, Path]:
        # One level of 256 directories: a second level (65,536) cost a directory creation per instance
        # for the first tens of thousands of instances, at ~0.7 ms each on a journaled disk. Paths are
        # stored per instance, so files written under the older two-level layout still resolve.
        relative = f"objects/{digest[:2]}/{digest}.dcm"
        target = self.root / relative
        if target.parent not in self._made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._made_dirs.add(target.parent)
        return relative, target


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

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._hasher = hashlib.sha256()
        self._size = 0
        self._out: BinaryIO | None = path.open("wb")

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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flush(out: BinaryIO, fsync: bool) -> None:
    out.flush()
    if fsync:
        os.fsync(out.fileno())
