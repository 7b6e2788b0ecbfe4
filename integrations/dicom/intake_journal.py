"""The intake journal: what a Storage SCP acknowledged but may not have indexed yet.

Why: the index write left the C-STORE acknowledgement path (`batched_indexer`), so between Success and
the commit of its index row an instance is known only by its spool file and one line here. Each dicom
process appends to its own JSON-lines file under `<spool>/journal/`, held with an exclusive `flock` for
as long as the process lives; the kernel drops the lock when the process dies however it dies, which is
how a later process (this host, same spool) tells an orphaned journal from a live one. A line holds no
patient data, only the spool path, digest, size, calling AE and time: replay re-reads the rest from the
spooled file, which stays sealed at rest when the spool is encrypted.

Line formats (one JSON object per line, appended with one `os.write` on an O_APPEND descriptor):
- `{"seq": n, "path": ..., "sha256": ..., "size": ..., "ae": ..., "at": ...}`: an acknowledged instance;
- `{"done": [n, ...]}`: those instances are committed to the index (written without fdatasync: a lost
  marker only means an idempotent re-index at the next replay).
A file is rotated after `rotate_lines` entries and deleted once every entry in it is done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from integrations.dicom.spool import fsync_path

LOG = logging.getLogger(__name__)
JOURNAL_DIR = "journal"
_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class JournalEntry:
    """One acknowledged instance as the journal records it (no patient data)."""

    seq: int
    spool_path: str
    sha256: str
    size_bytes: int
    calling_ae: str
    received_at: datetime

    def line(self) -> bytes:
        record = {
            "seq": self.seq,
            "path": self.spool_path,
            "sha256": self.sha256,
            "size": self.size_bytes,
            "ae": self.calling_ae,
            "at": self.received_at.isoformat(),
        }
        return json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class EntryHandle:
    """Where an appended entry lives, so the indexer can mark it done in the right file."""

    file: _JournalFile
    seq: int


class _JournalFile:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.lines = 0
        self.outstanding = 0
        self.retired = False


class IntakeJournal:
    """Thread-safe: association threads append, the indexer thread marks done."""

    def __init__(self, directory: Path, *, fsync: bool, rotate_lines: int = 50_000) -> None:
        self.directory = directory
        self._fsync = fsync
        self._rotate_lines = rotate_lines
        self._lock = threading.Lock()
        self._seq = 0
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Opened at the first append: a process that never receives leaves no file behind.
        self._active: _JournalFile | None = None
        self._files: list[_JournalFile] = []
        self._closed = False

    def _open_new(self) -> _JournalFile:
        path = self.directory / f"intake-{os.getpid()}-{uuid.uuid4().hex[:12]}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        if self._fsync:
            fsync_path(self.directory)  # the new name must survive a power cut with its lines
        return _JournalFile(path, fd)

    def append(
        self, spool_path: str, sha256: str, size_bytes: int, calling_ae: str, at: datetime
    ) -> EntryHandle:
        """Record one instance before it is acknowledged; durable on return when the spool fsyncs."""
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "the intake journal is closed")
            if self._active is None or self._active.lines >= self._rotate_lines:
                self._rotate()
            journal_file = self._active
            assert journal_file is not None
            self._seq += 1
            line = JournalEntry(self._seq, spool_path, sha256, size_bytes, calling_ae, at).line()
            _write_all(journal_file.fd, line)
            journal_file.lines += 1
            journal_file.outstanding += 1
            handle = EntryHandle(journal_file, self._seq)
        if self._fsync:
            os.fdatasync(journal_file.fd)
        return handle

    def mark_done(self, handles: list[EntryHandle]) -> None:
        """The index rows of these entries are committed; files whose entries are all done go away."""
        by_file: dict[int, tuple[_JournalFile, list[int]]] = {}
        for handle in handles:
            by_file.setdefault(id(handle.file), (handle.file, []))[1].append(handle.seq)
        with self._lock:
            if self._closed:  # its descriptors are closed (and their numbers may be reused)
                return
            for journal_file, seqs in by_file.values():
                journal_file.outstanding -= len(seqs)
                if journal_file.retired and journal_file.outstanding == 0:
                    self._remove(journal_file)
                else:
                    with contextlib.suppress(OSError):  # a lost marker costs a re-index, nothing more
                        _write_all(journal_file.fd, json.dumps({"done": seqs}).encode() + b"\n")

    def close(self) -> None:
        """At shutdown, after the indexer drained: a file with nothing outstanding is deleted, and the
        lock on any other is dropped so the next start replays it."""
        with self._lock:
            self._closed = True
            for journal_file in list(self._files):
                if journal_file.outstanding == 0:
                    self._remove(journal_file)
                else:
                    os.close(journal_file.fd)
            self._files.clear()
            self._active = None

    def _rotate(self) -> None:
        old, self._active = self._active, self._open_new()
        self._files.append(self._active)
        if old is None:
            return
        old.retired = True
        if old.outstanding == 0:
            self._remove(old)

    def _remove(self, journal_file: _JournalFile) -> None:
        # Unlink before unlocking: a replaying process that takes the lock finds no file to read.
        journal_file.path.unlink(missing_ok=True)
        os.close(journal_file.fd)
        if journal_file in self._files:
            self._files.remove(journal_file)


@dataclass
class OrphanedJournal:
    """A journal file whose writer is gone, locked by us until `release` (after its entries are indexed)."""

    path: Path
    fd: int

    def pending(self) -> list[JournalEntry]:
        return pending_entries(self.path)

    def mark_done(self, seqs: list[int]) -> None:
        if seqs:
            _write_all(self.fd, json.dumps({"done": seqs}).encode() + b"\n")

    def release(self, *, delete: bool) -> None:
        if delete:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


def claim_orphans(directory: Path) -> Iterator[OrphanedJournal]:
    """Every journal file in `directory` whose lock is free: its process died (or stopped with entries
    it could not index). A file still locked belongs to a live process sharing the spool and is skipped."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"intake-*{_SUFFIX}")):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:  # its owner finished with it a moment ago
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not path.exists():  # deleted by its owner between our open and our lock
            os.close(fd)
            continue
        yield OrphanedJournal(path, fd)


def pending_entries(path: Path) -> list[JournalEntry]:
    """Entries of a journal file not marked done, in order. A torn last line (the process died inside
    the write, before acknowledging) is skipped; so is any other line that does not parse, with a warning."""
    entries: dict[int, JournalEntry] = {}
    done: set[int] = set()
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            try:
                record = json.loads(raw)
                if "done" in record:
                    done.update(int(seq) for seq in record["done"])
                    continue
                entry = JournalEntry(
                    seq=int(record["seq"]),
                    spool_path=str(record["path"]),
                    sha256=str(record["sha256"]),
                    size_bytes=int(record["size"]),
                    calling_ae=str(record["ae"]),
                    received_at=datetime.fromisoformat(record["at"]),
                )
            except (ValueError, KeyError, TypeError):
                if raw.endswith(b"\n"):
                    LOG.warning("skipping unreadable line %d of intake journal %s", number, path.name)
                continue
            entries[entry.seq] = entry
    return [entry for seq, entry in entries.items() if seq not in done]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
