"""STOW-RS into the same index, through a real uvicorn server and httpx (real sockets)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from dicom_support import DicomStore, make_dicom_store  # type: ignore[import-not-found]
from fastapi import FastAPI
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from integrations.dicom.spool import Spool
from integrations.dicom.synthetic import make_image
from integrations.dicomweb.stow import make_stow_router
from integrations.store.models import Instance, Study


def part10(ds: Any) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: list[bytes], boundary: str = "vt-boundary") -> tuple[bytes, str]:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, sessionmaker[Session], Spool, DicomStore]]:
    store = make_dicom_store(tmp_path)
    sessions, ledger = store.sessions, store.ledger
    spool = Spool(tmp_path / "spool", fsync=False)
    app = FastAPI()
    app.include_router(make_stow_router(spool=spool, session_factory=sessions, ledger=ledger))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", sessions, spool, store
    uv.should_exit = True
    thread.join(timeout=10)


def test_stow_stores_a_study_atomically(server: Any) -> None:
    base, sessions, spool, store = server
    study = generate_uid()
    body, content_type = multipart([part10(make_image(study_uid=study, seed=i)) for i in range(3)])
    response = httpx.post(f"{base}/dicomweb/studies", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    assert len(response.json()["00081199"]["Value"]) == 3
    with sessions() as session:
        assert session.execute(select(Study.instance_count)).scalar_one() == 3
        for row in session.execute(select(Instance)).scalars():
            assert spool.absolute(row.spool_path).exists()
    [entry] = store.entries("dicom.received")
    assert entry.payload["source"] == "stow-rs" and entry.payload["instance_count"] == 3
    assert "SYNTHETIC" not in repr(entry)


def test_one_bad_part_stores_nothing(server: Any) -> None:
    base, sessions, _, _ = server
    good = part10(make_image(study_uid=generate_uid()))
    body, content_type = multipart([good, b"not dicom at all" * 20])
    response = httpx.post(f"{base}/dicomweb/studies", content=body, headers={"content-type": content_type})
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    with sessions() as session:
        assert session.execute(select(Instance)).first() is None


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 415),
        ('multipart/related; type="image/jpeg"; boundary=x', 415),
        ("multipart/related", 400),
    ],
)
def test_wrong_media_type(server: Any, content_type: str, status: int) -> None:
    base = server[0]
    response = httpx.post(f"{base}/dicomweb/studies", content=b"x", headers={"content-type": content_type})
    assert response.status_code == status


def test_watermark_refuses_with_503(server: Any) -> None:
    base, _, spool, _ = server
    spool.min_free_bytes = 2**62
    body, content_type = multipart([part10(make_image(study_uid=generate_uid()))])
    assert (
        httpx.post(
            f"{base}/dicomweb/studies", content=body, headers={"content-type": content_type}
        ).status_code
        == 503
    )
