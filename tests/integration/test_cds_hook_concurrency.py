"""``patient-view`` under concurrent calls through the real app: batched writes, replay races, cache.

Calls go through httpx's ASGI transport on one event loop, so they really overlap inside the app (the
TestClient would send them one by one). The database is a real SQLite file; the PostgreSQL variant of
the writer is covered in ``test_cds_group_commit.py`` and ``test_cds_contract.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cds_support import ISSUER, PUBLIC_BASE, Store, build_app, hook_body, make_store, searchset, seed_report
from sqlalchemy import func, select

from cds.client_auth.ehr_signer import EhrTokenSigner
from cds.services.draft_cache import DraftReportCache, draft_cache_for
from integrations.store.models import Card as StoredCard

SERVICE = "/cds-services/veritrace-patient-view"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def signer() -> EhrTokenSigner:
    return EhrTokenSigner.generate(ISSUER, alg="ES384")


def _body(patient: str) -> dict[str, object]:
    prefetch = {"finalReports": searchset(), "imagingStudies": searchset()}
    return hook_body("patient-view", {"userId": "Practitioner/u1", "patientId": patient}, prefetch)


async def _calls(app: object, tokens: list[str], patient: str) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_BASE) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(SERVICE, json=_body(patient), headers={"Authorization": f"Bearer {t}"})
                    for t in tokens
                )
            )
        )


def _stored_cards(store: Store) -> int:
    with store.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(StoredCard)) or 0)


def test_concurrent_calls_all_answered_stored_audited_in_shared_batches(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    seed_report(store, patient_id="pc1", severity="critical")
    seed_report(store, patient_id="pc1", severity="minor")
    app = build_app(tmp_path, store, signer)
    before = store.ledger.size()
    calls = 30
    responses = asyncio.run(_calls(app, [signer.token(PUBLIC_BASE + SERVICE) for _ in range(calls)], "pc1"))
    assert [r.status_code for r in responses] == [200] * calls
    uuids = {card["uuid"] for r in responses for card in r.json()["cards"]}
    assert len(uuids) == 2 * calls  # every call its own card identities
    assert _stored_cards(store) == 2 * calls
    entries = [store.ledger.entry(i) for i in range(before, store.ledger.size())]
    assert len(entries) == calls
    assert {e.payload["status"] for e in entries} == {200}
    assert {u for e in entries for u in e.payload["cardUuids"]} == uuids
    assert app.state.cds.commits.batches < 2 * calls  # claims and records of overlapping calls shared


def test_the_same_token_sent_concurrently_is_answered_once(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    seed_report(store, patient_id="pc2")
    app = build_app(tmp_path, store, signer)
    token = signer.token(PUBLIC_BASE + SERVICE)
    before = store.ledger.size()
    responses = asyncio.run(_calls(app, [token] * 6, "pc2"))
    assert sorted(r.status_code for r in responses) == [200] + [401] * 5
    refused = [r for r in responses if r.status_code == 401]
    assert all("replay" in r.json()["issue"][0]["diagnostics"] for r in refused)
    assert _stored_cards(store) == 1  # only the accepted call's card
    statuses = sorted(store.ledger.entry(i).payload["status"] for i in range(before, store.ledger.size()))
    assert statuses == [200] + [401] * 5


def test_a_new_draft_shows_once_the_short_cache_expires(
    tmp_path: Path, store: Store, signer: EhrTokenSigner
) -> None:
    seed_report(store, patient_id="pc3", summary="First draft")
    app = build_app(tmp_path, store, signer)
    cache = draft_cache_for(store.session_factory)
    cache.ttl_s = 0.3

    def cards() -> int:
        (response,) = asyncio.run(_calls(app, [signer.token(PUBLIC_BASE + SERVICE)], "pc3"))
        assert response.status_code == 200
        return len(response.json()["cards"])

    assert cards() == 1
    seed_report(store, patient_id="pc3", summary="Second draft")
    assert cards() == 1  # within the TTL: the cached list
    time.sleep(0.35)
    assert cards() == 2


def test_draft_cache_bounds_and_arguments(store: Store) -> None:
    seed_report(store, patient_id="a")
    cache = DraftReportCache(store.session_factory, ttl_s=60, max_patients=2)
    assert len(cache.drafts("a")) == 1 and cache.drafts("b") == () and cache.drafts("c") == ()
    assert cache.misses == 3
    cache.drafts("a")  # "a" was evicted (least recently used of three, bound two): read again
    assert cache.misses == 4
    cache.drafts("c")
    assert cache.misses == 4
    with pytest.raises(ValueError, match="ttl_s"):
        DraftReportCache(store.session_factory, ttl_s=-1)
    with pytest.raises(ValueError, match="max_patients"):
        DraftReportCache(store.session_factory, max_patients=0)


def test_draft_cache_reads_once_per_expiry_under_concurrent_calls(store: Store) -> None:
    seed_report(store, patient_id="busy")
    cache = DraftReportCache(store.session_factory, ttl_s=0.2)
    start = threading.Barrier(20)

    def call() -> int:
        start.wait()
        return len(cache.drafts("busy"))

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(lambda _: call(), range(20))) == [1] * 20
        assert cache.misses == 1  # the others waited for the first read
        time.sleep(0.25)
        seed_report(store, patient_id="busy")
        counts = list(pool.map(lambda _: call(), range(20)))
    assert cache.misses == 2
    assert set(counts) <= {1, 2} and counts.count(2) >= 1  # the expired list, or the re-read one
    assert len(cache.drafts("busy")) == 2
