"""CPU of `InstanceReceiver.receive` per CT instance, in-process (no sockets), SQLite index.

Usage:
    .venv/bin/python bench/receive_cpu.py [--rounds 5] [--fsync]

400 CT 512x512 instances (as bench/dicom_ingest.py), each already written to a spool temp file before the
clock starts, so the numbers are the receive call alone: header scan, admission, spool adopt, intake
journal line (and, on the indexer thread, the batched index write and the receipts). Reports per round:
- receiving thread: `thread_time` of the loop that calls `receive` (the acknowledgement path);
- process until indexed: `process_time` from the first call until the indexer is idle (all rows in).
Run it from a checkout before the intake journal to compare: the old receiver indexed on the calling
thread, so there both numbers are the same.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from audit import Ledger, LedgerConfig
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.receive import InstanceReceiver
from integrations.dicom.spool import Spool
from integrations.dicom.synthetic import make_image, write_part10
from integrations.store.config import StoreConfig
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.migrate import upgrade_database
from integrations.store.models import Instance

COUNT = 400
DATA = Path(tempfile.gettempdir()) / "veritrace-bench-receive-cpu" / "ct-400-512x512"


def ct_files() -> list[Path]:
    if not (DATA.exists() and len(list(DATA.iterdir())) == COUNT):
        shutil.rmtree(DATA, ignore_errors=True)
        study, series = generate_uid(), generate_uid()
        for i in range(COUNT):
            image = make_image(
                study_uid=study, series_uid=series, rows=512, columns=512, instance_number=i + 1, seed=i
            )
            write_part10(image, DATA / f"{i:05d}.dcm")
    return sorted(DATA.iterdir())


def one_round(files: list[Path], fsync: bool) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="receive-cpu-"))
    engine = make_engine(StoreConfig(database_url=f"sqlite:///{work / 'vt.db'}"))
    upgrade_database(engine)
    sessions = make_session_factory(engine)
    spool = Spool(work / "spool", min_free_bytes=0, fsync=fsync)
    batcher = ReceiptBatcher(Ledger(engine, LedgerConfig(key_dir=work / "keys", anchor_dir=None)), "bench")
    indexer: Any = None
    if "indexer" in inspect.signature(InstanceReceiver.__init__).parameters:
        from integrations.dicom.batched_indexer import BatchedIndexer, IndexWriter
        from integrations.dicom.intake_journal import JOURNAL_DIR, IntakeJournal

        journal = IntakeJournal(spool.root / JOURNAL_DIR, fsync=fsync)
        indexer = BatchedIndexer(IndexWriter(engine), batcher, journal)
        indexer.start()
        receiver = InstanceReceiver(spool, indexer)
    else:  # a checkout from before the intake journal
        receiver = InstanceReceiver(spool, sessions, batcher)  # type: ignore[arg-type,call-arg]
    written = []
    for path in files:
        incoming = spool.incoming()
        incoming.write(path.read_bytes())
        written.append(incoming.finish())
    key = object()
    process_start, thread_start = time.process_time(), time.thread_time()
    for item in written:
        result = receiver.receive(item.path, calling_ae="BENCH", association_key=key, written=item)
        assert result.status == 0, result
    thread_ms = (time.thread_time() - thread_start) * 1000 / len(files)
    if indexer is not None:
        assert indexer.wait_idle(300)
    process_ms = (time.process_time() - process_start) * 1000 / len(files)
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == len(files)
    if indexer is not None:
        indexer.association_ended(key)
        indexer.stop()
    else:
        batcher.flush(key)
    engine.dispose()
    shutil.rmtree(work, ignore_errors=True)
    return thread_ms, process_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fsync", action="store_true")
    args = parser.parse_args()
    files = ct_files()
    rounds = [one_round(files, args.fsync) for _ in range(args.rounds)]
    for thread_ms, process_ms in rounds:
        print(f"receiving thread {thread_ms:.2f}, process until indexed {process_ms:.2f} ms/instance")
    thread_median = statistics.median(r[0] for r in rounds)
    process_median = statistics.median(r[1] for r in rounds)
    print(f"median: receiving thread {thread_median:.2f}, until indexed {process_median:.2f} ms/instance")


if __name__ == "__main__":
    main()
