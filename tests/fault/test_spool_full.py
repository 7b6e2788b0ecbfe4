"""Disk full on the spool: instances are refused with 0xA700 and nothing half-written is left behind.

Two ways the spool fills: the free-space watermark (the gateway refuses before writing, the normal case)
and a filesystem that fills up mid-write (ENOSPC on the copy into the spool). Both run against a real,
small tmpfs mounted for the test (root only; elsewhere the test says so and is skipped). Index rows
follow the acknowledgement on the SCP's indexer thread, so row counts are read once it is idle.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cds.demo_study import build_demo_ct_study, store_instances
from integrations.dicom.config import DicomConfig
from integrations.dicom.scp import StorageScp
from integrations.dicom.status import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from integrations.store.models import Instance
from tests.conftest import free_port
from tests.fault.harness import Deployment, wait_until
from tests.integration.dicom_support import make_dicom_store


def _mount_tmpfs(path: Path, size_bytes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


def _resize_tmpfs(path: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True, capture_output=True)


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "spool"
    _mount_tmpfs(mount_point, 1024 * 1024)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _send(port: int, paths: list[Path]) -> list[int]:
    return store_instances(paths, host="127.0.0.1", port=port, called_ae="VERITRACE", calling_ae="TEST_PACS")


def _intact(path: Path) -> bool:
    """Spool objects are named by their SHA-256: a truncated file no longer matches its name."""
    return hashlib.sha256(path.read_bytes()).hexdigest() == path.stem


def _spool_files(spool: Path) -> list[Path]:
    return [path for path in spool.rglob("*") if path.is_file()]


def test_filesystem_fills_mid_write(tmp_path: Path, small_spool: Path) -> None:
    """ENOSPC while copying into the spool: 0xA700, no partial object, no temp file, resend succeeds."""
    paths = build_demo_ct_study(tmp_path / "incoming", patient_id="vt-fault-full", slices=4)
    instance_size = paths[0].stat().st_size
    _resize_tmpfs(small_spool, int(instance_size * 1.5))  # room for one instance, not two
    store = make_dicom_store(tmp_path)
    config = DicomConfig(spool_dir=small_spool, port=free_port(), min_free_bytes=0, stable_age_s=1)
    scp = StorageScp(config, store.sessions, store.ledger)
    scp.start()
    try:
        statuses = _send(scp.port, paths)
        assert statuses[0] == STATUS_SUCCESS
        assert set(statuses[1:]) == {STATUS_OUT_OF_RESOURCES}
        files = _spool_files(small_spool / "objects")
        assert len(files) == 1
        assert _intact(files[0]), "a partial file was left in the spool"
        assert scp.spool.unfinished_writes() == []
        assert scp.indexer.wait_idle(30)
        with store.sessions() as session:
            assert session.scalar(select(func.count(Instance.id))) == 1

        _resize_tmpfs(small_spool, instance_size * len(paths) * 2)
        assert _send(scp.port, paths) == [STATUS_SUCCESS] * len(paths)
        assert scp.indexer.wait_idle(30)
        with store.sessions() as session:
            assert session.scalar(select(func.count(Instance.id))) == len(paths)
        files = _spool_files(small_spool / "objects")
        assert len(files) == len(paths) and all(_intact(path) for path in files)
    finally:
        scp.stop()
        store.engine.dispose()


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_watermark_refuses_before_writing(deployment: Deployment, small_spool: Path) -> None:
    """The `dicom` process on a spool below its free-space watermark refuses everything, writes nothing."""
    settings = deployment.settings(spool_dir=str(small_spool))
    assert settings.dicom_config().min_free_bytes > 1024 * 1024
    deployment.spawn("dicom", "dicom", spool_dir=str(small_spool))
    deployment.wait_dicom(settings.dicom_port)
    paths = build_demo_ct_study(deployment.home / "incoming", patient_id="vt-fault-wm", slices=2)

    assert _send(settings.dicom_port, paths) == [STATUS_OUT_OF_RESOURCES] * len(paths)
    assert _spool_files(small_spool / "objects") == []
    with deployment.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0

    _resize_tmpfs(small_spool, settings.dicom_config().min_free_bytes + 64 * 1024 * 1024)
    assert _send(settings.dicom_port, paths) == [STATUS_SUCCESS] * len(paths)

    def indexed() -> int:
        with deployment.session() as session:
            return int(session.scalar(select(func.count(Instance.id))) or 0)

    wait_until(lambda: indexed() == len(paths), timeout_s=60, what="the acknowledged rows")
