"""Empty spool temp files created ahead of need on a background thread.

Why: creating a file costs 0.4-1 ms of kernel time on the ext4 volumes we measured, about a fifth of the
receiving thread's time per CT instance, and it sits on the acknowledgement path (a sender waits for each
response before the next instance). A thread that keeps a few files open and ready moves that cost off the
path, onto the core the sender leaves idle while it waits.

Files are made in turn into `_SLOTS` subdirectories. Creating a file holds its directory's lock for the
whole inode allocation, which on ext4 without a journal, after many deletions, ran to a millisecond; the
receiving thread's rename out of that same directory waited for it (6% of the process's CPU, spinning).
The file taken now was made several creations ago, in another slot than the one being filled.

Each process keeps its files in a directory it owns, `<spool>/ready/<token>/<slot>/` (`owned_dirs`), so
a start-up sweep by another dicom process on the same spool never takes a file this one is writing
into. Taken files leave the directory when renamed into the spool; `close` removes the rest at
shutdown. A file that disappears while it waits anyway is noticed when taken (no links left) and
replaced.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading
import uuid
from pathlib import Path
from typing import BinaryIO

from integrations.dicom.owned_dirs import OwnedDirectory

LOG = logging.getLogger(__name__)
_RETRY_AFTER_ERROR_S = 0.5
# More slots than files waiting (depth 4 by default) plus the one being made.
_SLOTS = 8


class ReadyFiles:
    """`take` a new, empty, open temp file: made ahead by the `start` thread, or on the spot if none waits."""

    def __init__(self, parent: Path, depth: int = 4) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._owned = OwnedDirectory(parent)
        self.directory = self._owned.directory
        self._slots = [self.directory / str(number) for number in range(max(_SLOTS, depth + 2))]
        for slot in self._slots:
            slot.mkdir(mode=0o700)
        self._next_slot = itertools.cycle(self._slots)
        self._ready: queue.Queue[tuple[Path, BinaryIO]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def create(self) -> tuple[Path, BinaryIO]:
        path = next(self._next_slot) / f"{uuid.uuid4().hex}.part"
        return path, path.open("xb")

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._fill, name="spool-ready-files", daemon=True)
            self._thread.start()

    def take(self) -> tuple[Path, BinaryIO]:
        while True:
            try:
                path, out = self._ready.get_nowait()
            except queue.Empty:
                return self.create()
            if os.fstat(out.fileno()).st_nlink > 0:
                return path, out
            out.close()  # swept away while it waited: take another

    def close(self) -> None:
        """Stop the thread, remove the files still waiting and this process's directory and lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        while True:
            try:
                path, out = self._ready.get_nowait()
            except queue.Empty:
                break
            _discard(path, out)
        self._owned.release()  # a taken file still there stays, unlocked, for the next sweep

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.create()
            except OSError as exc:  # disk full, directory removed: the SCP's own refusals cover it
                LOG.warning("could not create a ready spool file (%s)", type(exc).__name__)
                self._stop.wait(_RETRY_AFTER_ERROR_S)
                continue
            while True:
                if self._stop.is_set():
                    _discard(*item)
                    return
                try:
                    self._ready.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue


def _discard(path: Path, out: BinaryIO) -> None:
    with contextlib.suppress(OSError):
        out.close()
    path.unlink(missing_ok=True)
