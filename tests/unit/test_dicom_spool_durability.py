"""With fsync on, a file placed in the spool has its data and its directory entry synced before Success."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from integrations.dicom import spool as spool_module
from integrations.dicom.spool import Spool


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What was fsynced, in order: 'dir:<name>' for directories, 'file' for files."""
    calls: list[str] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(f"dir:{path.name}" if path.is_dir() else "file")
        real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", record)
    return calls


@pytest.mark.parametrize("path", ["incoming", "stream"])
def test_fsync_covers_the_file_and_its_directory_entries(
    tmp_path: Path, synced: list[str], path: str
) -> None:
    spool = Spool(tmp_path / "spool", fsync=True)
    body = b"\0" * 128 + b"DICM" + os.urandom(64)
    if path == "incoming":
        incoming = spool.incoming()
        incoming.write(body)
        placed = spool.adopt(incoming.path, incoming.finish())
    else:
        placed = spool.write_stream([body])
    shard = Path(placed.relative_path).parent.name
    # The data first, then the new shard directory's entry in objects/, then the file's entry in it.
    assert synced == ["file", "dir:objects", f"dir:{shard}"]
    assert (spool.root / placed.relative_path).read_bytes() == body


def test_a_second_file_in_the_same_directory_syncs_only_that_directory(
    tmp_path: Path, synced: list[str]
) -> None:
    spool = Spool(tmp_path / "spool", fsync=True)
    first = spool.write_stream([b"one"])
    synced.clear()
    shard = Path(first.relative_path).parent
    # Find a second body landing in the same shard (the first two hex digits of its SHA-256).
    body = next(
        candidate
        for n in range(100_000)
        if hashlib.sha256(candidate := f"two-{n}".encode()).hexdigest()[:2] == shard.name
    )
    spool.write_stream([body])
    assert synced == ["file", f"dir:{shard.name}"]


def test_without_fsync_nothing_is_synced(tmp_path: Path, synced: list[str]) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.write_stream([b"page cache only"])
    assert synced == []


def test_shard_directories_made_ahead_are_synced_once_and_not_made_again(
    tmp_path: Path, synced: list[str]
) -> None:
    spool = Spool(tmp_path / "spool", fsync=True)
    spool.make_shard_directories()
    shards = sorted(path.name for path in spool.objects_dir.iterdir())
    assert shards == [f"{number:02x}" for number in range(256)]
    assert synced == ["dir:objects"]  # one sync for the 256 new entries
    synced.clear()
    placed = spool.write_stream([b"\0" * 128 + b"DICM"])
    assert synced == ["file", f"dir:{Path(placed.relative_path).parent.name}"]  # no directory made
    Spool(tmp_path / "spool", fsync=True).make_shard_directories()  # a restart: nothing to make or sync
    assert synced == ["file", f"dir:{Path(placed.relative_path).parent.name}"]
