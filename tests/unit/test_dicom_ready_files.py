"""Temp files made ahead for the SCP: taken open and empty, replaced when swept, removed at close."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from integrations.dicom.ready_files import ReadyFiles
from integrations.dicom.spool import Spool


def _files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


def _wait_for_files(directory: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = _files_under(directory)
        if len(found) >= count:
            return found
        time.sleep(0.01)
    raise AssertionError(f"{directory} never held {count} files")


def test_files_are_made_ahead_taken_once_and_the_rest_removed_at_close(tmp_path: Path) -> None:
    ready = ReadyFiles(tmp_path / "ready", depth=3)
    ready.start()
    deadline = time.monotonic() + 10
    while not ready._ready.full():  # three made ahead and in line
        assert time.monotonic() < deadline, "the files were never made ahead"
        time.sleep(0.01)
    waiting = set(_files_under(ready.directory))
    assert len({path.parent for path in waiting}) == len(waiting)  # each in its own slot directory
    taken = [ready.take() for _ in range(5)]  # three made ahead, then refilled or made on the spot
    paths = [path for path, _ in taken]
    assert len(set(paths)) == 5
    assert set(paths[:3]) <= waiting
    for path, out in taken:
        out.write(b"DICM")
        out.close()
        assert path.read_bytes() == b"DICM"
    _wait_for_files(ready.directory, 5 + 3)  # refilled behind the takes
    ready.close()
    assert _files_under(ready.directory) == sorted(paths)  # only the taken ones stay


def test_a_file_swept_while_it_waited_is_replaced(tmp_path: Path) -> None:
    ready = ReadyFiles(tmp_path / "ready", depth=1)  # not started: the test puts the file in line
    path, out = ready.create()
    ready._ready.put((path, out))
    path.unlink()  # another process's start-up sweep
    taken_path, taken = ready.take()
    assert taken_path != path and taken_path.exists()
    assert out.closed
    taken.close()


def _process_dir(spool: Spool) -> Path:
    (directory,) = [path for path in spool.ready_dir.iterdir() if path.is_dir()]
    return directory


def test_spool_takes_ready_files_and_sweeps_their_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.start_ready_files(depth=2)
    own = _process_dir(spool)
    _wait_for_files(own, 2)
    incoming = spool.incoming()
    assert incoming.path.parent.parent == own
    incoming.write(b"\0" * 128 + b"DICM")
    spooled = spool.adopt(incoming.path, incoming.finish())
    assert (spool.root / spooled.relative_path).read_bytes().endswith(b"DICM")
    assert not incoming.path.exists()
    spool.stop_ready_files()
    assert not any(spool.ready_dir.iterdir())  # its files, directory and lock are gone
    # Loose files (none are made there) go with the next start's sweep.
    for name in ("a.part", "b.part"):
        (spool.ready_dir / name).write_bytes(b"")
    assert Spool(tmp_path / "spool", fsync=False).sweep_tmp() == 2
    assert not any(spool.ready_dir.iterdir())


def test_a_sweep_keeps_a_live_process_files_and_removes_a_dead_one(tmp_path: Path) -> None:
    """Two dicom processes on one spool: the one starting sweeps; the other's files in use survive."""
    live = Spool(tmp_path / "spool", fsync=False)
    live.start_ready_files(depth=2)
    live_dir = _process_dir(live)
    _wait_for_files(live_dir, 2)
    writing = live.incoming()
    writing.write(b"half a data set" * 10_000)  # past the write buffer: on disk now

    starting = Spool(tmp_path / "spool", fsync=False)
    assert starting.sweep_tmp() == 0
    assert writing.path.exists() and len(_files_under(live_dir)) >= 2
    assert starting.unfinished_writes() == [writing.path]

    # The live one dies without cleaning up: its lock is released by the kernel, its files stay.
    ready = live._ready
    assert ready is not None
    ready._stop.set()
    ready._owned.release(remove=False)  # as a kill would: the lock drops, the files stay
    time.sleep(0.3)  # the fill thread notices the stop
    left = _files_under(live_dir)
    assert starting.sweep_tmp() == len(left)
    assert not any(starting.ready_dir.iterdir())
    writing.discard()


def test_the_file_taken_is_not_in_the_directory_being_filled(tmp_path: Path) -> None:
    """Creating a file locks its directory; the receiver's rename out of it must not wait on that."""
    ready = ReadyFiles(tmp_path / "ready", depth=4)
    made = [ready.create() for _ in range(6)]
    for _, out in made:
        out.close()
    parents = [path.parent for path, _ in made]
    assert len(set(parents)) == 6 and all(parent.parent == ready.directory for parent in parents)
    ready.close()


def test_depth_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="depth"):
        ReadyFiles(tmp_path, depth=0)
