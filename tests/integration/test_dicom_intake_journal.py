"""The intake journal on PostgreSQL: acknowledged instances survive kill -9 and are indexed exactly once.

The SCP acknowledges an instance once it is spooled and journaled; the indexer thread commits its row
later. To make "acknowledged but not indexed" certain rather than a matter of timing, the test holds a
SHARE lock on `instances` from its own session: the indexer's INSERT waits on it, so nothing acknowledged
is committed until the test lets go. Real `veritrace dicom` processes, real dcmtk `storescu`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from audit import Ledger
from cds.settings import Settings
from integrations.dicom.config import DicomConfig
from integrations.dicom.intake_journal import JOURNAL_DIR
from integrations.dicom.scp import StorageScp
from integrations.dicom.spool import Spool
from integrations.dicom.spool_key import create_spool_key
from integrations.dicom.status import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from integrations.dicom.synthetic import make_image, write_part10
from integrations.store.engine import make_engine, make_session_factory
from integrations.store.models import Instance
from tests.conftest import free_port
from tests.fault.harness import wait_until
from tests.integration.dicom_support import make_dicom_store

pytestmark = pytest.mark.postgres


@contextmanager
def instances_locked(database_url: str) -> Iterator[None]:
    """Hold a lock that makes every INSERT into `instances` wait (reads go on)."""
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection:
        connection.execute("LOCK TABLE instances IN SHARE MODE")
        try:
            yield
        finally:
            connection.rollback()


class Gateway:
    """`veritrace dicom` processes sharing one home (so one spool) and one PostgreSQL database."""

    def __init__(self, home: Path, database_url: str, **variables: str) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "VERITRACE_HOME": str(home),
            "VERITRACE_DATABASE_URL": database_url,
            "VERITRACE_STABLE_AGE": "600",
            **{f"VERITRACE_{key.upper()}": value for key, value in variables.items()},
        }
        for key in ("VERITRACE_BROKER_URL", "VERITRACE_FHIR_BASE_URL"):
            self.env.pop(key, None)
        upgrade = subprocess.run(
            [sys.executable, "-m", "cds.cli", "db", "upgrade"], env=self.env, capture_output=True, timeout=120
        )
        assert upgrade.returncode == 0, upgrade.stderr.decode()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.database_url = database_url

    @property
    def spool(self) -> Path:
        return self.settings(free_port()).dicom_config().spool_dir.resolve()

    def settings(self, port: int) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update({**self.env, "VERITRACE_DICOM_PORT": str(port)})
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def start(self, port: int) -> subprocess.Popen[bytes]:
        log = (self.home / f"dicom-{port}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cds.cli", "dicom"],
            env={**self.env, "VERITRACE_DICOM_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)

        def answers_echo() -> bool:
            assert process.poll() is None, (self.home / f"dicom-{port}.log").read_text()
            echo = subprocess.run(
                ["echoscu", "-aec", "VERITRACE", "127.0.0.1", str(port)], capture_output=True
            )
            return echo.returncode == 0

        wait_until(answers_echo, timeout_s=90, interval_s=0.3, what=f"C-ECHO on {port}")
        return process

    def journal_of(self, process: subprocess.Popen[bytes]) -> list[Path]:
        return sorted((self.spool / JOURNAL_DIR).glob(f"intake-{process.pid}-*.jsonl"))

    def journaled_lines(self, process: subprocess.Popen[bytes]) -> int:
        total = 0
        for path in self.journal_of(process):
            try:
                total += sum(1 for line in path.read_bytes().splitlines() if line.startswith(b'{"seq"'))
            except FileNotFoundError:
                continue
        return total

    def rows(self) -> list[Instance]:
        engine = make_engine(self.settings(free_port()).store_config())
        try:
            with make_session_factory(engine)() as session:
                return list(session.scalars(select(Instance).order_by(Instance.id)))
        finally:
            engine.dispose()

    def receipts(self) -> list[str]:
        engine = make_engine(self.settings(free_port()).store_config())
        try:
            ledger = Ledger(engine, self.settings(free_port()).ledger_config())
            ledger.verify()
            return [
                item["sop_instance_uid"]
                for entry in ledger.iter_entries()
                if entry.kind == "dicom.received"
                for item in (entry.payload or {})["instances"]
            ]
        finally:
            engine.dispose()

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        self.processes.remove(process)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait(timeout=10)
        self.processes.remove(process)

    def close(self) -> None:
        for process in list(self.processes):
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def gateway(tmp_path: Path, postgres_url: str) -> Iterator[Gateway]:
    made = Gateway(tmp_path / "home", postgres_url)
    yield made
    made.close()


def ct_study(folder: Path, count: int) -> dict[Path, str]:
    """`count` small CT slices of one new study: file -> SOP Instance UID."""
    study = generate_uid()
    files = {}
    for i in range(count):
        path = write_part10(make_image(study_uid=study, instance_number=i, seed=i), folder / f"{i:04d}.dcm")
        files[path] = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return files


def storescu(port: int, paths: list[Path], *, verbose: bool = False) -> list[str]:
    command = ["storescu", *(["-v"] if verbose else []), "-aet", "PACS", "-aec", "VERITRACE"]
    return [*command, "127.0.0.1", str(port), *map(str, paths)]


def acknowledged_files(storescu_log: str) -> list[Path]:
    """The files `storescu -v` reported a Success response for, in order."""
    acknowledged: list[Path] = []
    current: Path | None = None
    for line in storescu_log.splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged


def test_kill_9_mid_stream_then_replay_indexes_every_acknowledged_instance_once(
    gateway: Gateway, tmp_path: Path
) -> None:
    files = ct_study(tmp_path / "study", 300)
    port = free_port()
    scp = gateway.start(port)
    log = tmp_path / "storescu.log"
    with instances_locked(gateway.database_url):
        with log.open("wb") as out:
            sender = subprocess.Popen(storescu(port, list(files), verbose=True), stdout=out, stderr=out)
            try:
                wait_until(
                    lambda: gateway.journaled_lines(scp) >= 30,
                    timeout_s=120,
                    interval_s=0.02,
                    what="30 lines",
                )
                killed_journal = gateway.journal_of(scp)
                gateway.kill(scp)
            finally:
                sender.wait(timeout=60)
        acknowledged = [files[path] for path in acknowledged_files(log.read_text(errors="replace"))]
        assert len(acknowledged) >= 1 and len(acknowledged) < len(files), "the kill did not land mid-stream"
        assert gateway.rows() == []  # nothing acknowledged was committed: all of it rests on the journal
    assert killed_journal and all(path.exists() for path in killed_journal)

    scp = gateway.start(port)  # replays the dead process's journal before it listens
    rows = gateway.rows()
    indexed = Counter(row.sop_instance_uid for row in rows)
    assert set(acknowledged) <= set(indexed), "an acknowledged instance was lost"
    assert set(indexed) <= set(files.values()) and max(indexed.values()) == 1
    assert not any(path.exists() for path in killed_journal), "the replayed journal was not deleted"

    resend = subprocess.run(storescu(port, list(files)), capture_output=True, timeout=300)
    assert resend.returncode == 0, resend.stderr.decode(errors="replace")
    gateway.stop(scp)  # a graceful stop indexes everything acknowledged before it exits

    rows = gateway.rows()
    assert sorted(row.sop_instance_uid for row in rows) == sorted(files.values())  # each exactly once
    on_disk = {str(path.relative_to(gateway.spool)) for path in (gateway.spool / "objects").rglob("*.dcm")}
    assert on_disk == {row.spool_path for row in rows}
    assert list((gateway.spool / JOURNAL_DIR).iterdir()) == []
    assert Spool(gateway.spool).unfinished_writes() == []
    assert set(gateway.receipts()) == set(files.values())


def test_a_dead_process_journal_is_replayed_by_another_process_and_a_live_one_is_left_alone(
    tmp_path: Path, postgres_url: str
) -> None:
    """Three processes on one encrypted spool: replay reads the dead one's sealed files."""
    key_file = tmp_path / "keys" / "spool.key"
    create_spool_key(key_file)
    gateway = Gateway(tmp_path / "home", postgres_url, spool_key_file=str(key_file))
    try:
        replays_a_dead_process_journal(gateway, tmp_path)
    finally:
        gateway.close()


def replays_a_dead_process_journal(gateway: Gateway, tmp_path: Path) -> None:
    files = ct_study(tmp_path / "study", 12)
    to_dead, to_live = list(files)[:6], list(files)[6:]
    dead_port, live_port, third_port = free_port(), free_port(), free_port()
    dead = gateway.start(dead_port)
    live = gateway.start(live_port)
    with instances_locked(gateway.database_url):
        for port, paths in ((dead_port, to_dead), (live_port, to_live)):
            sent = subprocess.run(storescu(port, paths), capture_output=True, timeout=120)
            assert sent.returncode == 0, sent.stderr.decode(errors="replace")
        dead_journal = gateway.journal_of(dead)
        gateway.kill(dead)
    live_uids = {files[path] for path in to_live}
    wait_until(
        lambda: {row.sop_instance_uid for row in gateway.rows()} == live_uids, timeout_s=60, what="rows"
    )
    live_journal = gateway.journal_of(live)
    assert dead_journal and live_journal

    third = gateway.start(third_port)
    rows = gateway.rows()
    assert sorted(row.sop_instance_uid for row in rows) == sorted(files.values())  # once each
    assert not any(path.exists() for path in dead_journal)
    assert all(path.exists() for path in live_journal), "a live process's journal was claimed"

    gateway.stop(third)
    gateway.stop(live)
    assert list((gateway.spool / JOURNAL_DIR).iterdir()) == []
    assert sorted(gateway.receipts()) == sorted(files.values())
    assert all((gateway.spool / row.spool_path).read_bytes()[128:132] == b"VTEC" for row in rows)


def test_a_full_intake_queue_refuses_with_out_of_resources_and_drops_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    store = make_dicom_store(tmp_path, postgres_url)
    config = DicomConfig(
        spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False, intake_queue_capacity=3
    )
    scp = StorageScp(config, store.sessions, store.ledger)
    scp.start()
    study = generate_uid()
    images = [make_image(study_uid=study, instance_number=i, seed=i) for i in range(6)]
    ae = AE("PACS")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    try:
        with instances_locked(postgres_url):
            assoc = ae.associate("127.0.0.1", scp.port, ae_title="VERITRACE")
            assert assoc.is_established
            statuses = [int(assoc.send_c_store(ds).Status) for ds in images]
            assoc.release()
            assert statuses == [STATUS_SUCCESS] * 3 + [STATUS_OUT_OF_RESOURCES] * 3
            assert len(list(scp.spool.objects_dir.rglob("*.dcm"))) == 3  # refused before spooling
        assert scp.indexer.wait_idle(60)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="VERITRACE")
        assert [int(assoc.send_c_store(ds).Status) for ds in images[3:]] == [STATUS_SUCCESS] * 3
        assoc.release()
    finally:
        scp.stop()
    with store.sessions() as session:
        rows = list(session.scalars(select(Instance).order_by(Instance.id)))
    assert [row.sop_instance_uid for row in rows] == [str(ds.SOPInstanceUID) for ds in images]
    assert {str(p.relative_to(scp.spool.root)) for p in scp.spool.objects_dir.rglob("*.dcm")} == {
        row.spool_path for row in rows
    }
    store.engine.dispose()
