"""Directories a process owns while it lives, so processes sharing a spool never sweep each other's files.

Why: a start-up sweep must remove what a crashed process left half-written, and nothing a live process
is still writing (an API process streaming a STOW-RS upload while a dicom process starts, two dicom
processes on one spool). Each owner makes `<parent>/<token>/` and holds an exclusive `flock` on
`<parent>/<token>.lock` for as long as it lives; the kernel drops the lock when the process dies,
however it dies. `sweep_orphaned` removes only directories whose lock it can take.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

LOCK_SUFFIX = ".lock"


class OwnedDirectory:
    """A new directory under `parent`, held (by its lock) until `release`."""

    def __init__(self, parent: Path) -> None:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_path, self._fd = _hold_new_lock(parent)
        self.directory = parent / self._lock_path.name.removesuffix(LOCK_SUFFIX)
        self.directory.mkdir(mode=0o700)

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self, *, remove: bool = True) -> None:
        """Drop the lock; with `remove`, first delete the directory and lock file if nothing is left in
        it (empty subdirectories aside). Anything left stays, unlocked, for the next sweep."""
        if self._fd < 0:
            return
        if remove and _remove_if_empty(self.directory):
            self._lock_path.unlink(missing_ok=True)
        fd, self._fd = self._fd, -1
        os.close(fd)


def sweep_orphaned(parent: Path) -> int:
    """Remove the directories of owners that are gone (their lock is free); returns the files removed.

    Loose files directly under `parent` (left by versions that wrote there) are removed too.
    """
    if not parent.is_dir():
        return 0
    removed = 0
    for entry in parent.iterdir():
        if entry.is_file() and entry.suffix != LOCK_SUFFIX:
            entry.unlink(missing_ok=True)
            removed += 1
    for lock_path in parent.glob(f"*{LOCK_SUFFIX}"):
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:  # its owner released it in the meantime
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live owner's files
            directory = parent / lock_path.name.removesuffix(LOCK_SUFFIX)
            if directory.is_dir():
                removed += sum(1 for path in directory.rglob("*") if not path.is_dir())
                shutil.rmtree(directory)
            lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return removed


def _hold_new_lock(parent: Path) -> tuple[Path, int]:
    """A new lock file under `parent`, held. A sweep that opened it between our create and our flock
    would have found it free and removed it; then the path no longer names our file and we start over."""
    while True:
        path = parent / f"{uuid.uuid4().hex}{LOCK_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except OSError:
            pass
        os.close(fd)


def _remove_if_empty(directory: Path) -> bool:
    """Remove `directory` and its empty subdirectories; False (it stays) if any file is left in it."""
    try:
        for sub in directory.iterdir():
            sub.rmdir()  # a file, or a subdirectory still holding one, raises
        directory.rmdir()
    except FileNotFoundError:
        return not directory.exists()
    except OSError:
        return False
    return True
