"""The intake journal's file rules: pending lines, done markers, torn lines, rotation, orphan claiming."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from integrations.dicom.intake_journal import EntryHandle, IntakeJournal, claim_orphans, pending_entries

AT = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def append(journal: IntakeJournal, n: int) -> EntryHandle:
    return journal.append(f"objects/aa/{n:064x}.dcm", f"{n:064x}", 100 + n, "PACS", AT)


def test_done_lines_are_not_pending_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = IntakeJournal(tmp_path, fsync=True)
    handles = [append(journal, n) for n in range(3)]
    journal.mark_done([handles[1]])
    [path] = list(tmp_path.iterdir())
    with path.open("ab") as out:
        out.write(b'{"seq":4,"path":"objects/aa/')  # a process killed inside its write
    pending = pending_entries(path)
    assert [(e.seq, e.size_bytes, e.calling_ae, e.received_at) for e in pending] == [
        (1, 100, "PACS", AT),
        (3, 102, "PACS", AT),
    ]
    assert b"SYN" not in path.read_bytes()  # paths, digests, sizes: no patient data
    journal.mark_done([handles[0], handles[2]])
    journal.close()
    assert list(tmp_path.iterdir()) == []  # all done: removed at close


def test_a_file_with_outstanding_lines_survives_close_for_the_next_start(tmp_path: Path) -> None:
    journal = IntakeJournal(tmp_path, fsync=False)
    append(journal, 1)
    journal.close()
    [orphan] = list(claim_orphans(tmp_path))
    assert [e.seq for e in orphan.pending()] == [1]
    orphan.release(delete=True)
    assert list(tmp_path.iterdir()) == []


def test_a_live_journal_is_not_claimed(tmp_path: Path) -> None:
    live = IntakeJournal(tmp_path, fsync=False)
    append(live, 1)
    assert list(claim_orphans(tmp_path)) == []  # its lock is held (another open file description)
    live.close()
    claimed = list(claim_orphans(tmp_path))
    assert len(claimed) == 1
    claimed[0].release(delete=False)


def test_a_rotated_file_is_removed_once_its_lines_are_done(tmp_path: Path) -> None:
    journal = IntakeJournal(tmp_path, fsync=False, rotate_lines=2)
    first = [append(journal, n) for n in range(2)]
    third = append(journal, 2)  # rotates
    assert len(list(tmp_path.iterdir())) == 2
    journal.mark_done(first)
    [remaining] = list(tmp_path.iterdir())
    assert [e.seq for e in pending_entries(remaining)] == [3]
    journal.mark_done([third])
    journal.close()
    assert list(tmp_path.iterdir()) == []
