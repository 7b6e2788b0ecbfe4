"""The hook path's group-commit writer on the real databases (SQLite file, PostgreSQL server).

What must hold: concurrent calls share transactions; a call is answered only once its rows are
committed (another engine sees them); a replayed ``jti`` is refused within a batch and across two
writers (two API replicas) on one database; an expired ``jti`` may be reused; a call whose rows the
database refuses fails alone; the writer thread leaves when idle and comes back on demand.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cds_support import Store, make_store, seed_report
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from audit import EntryDraft
from cds.group_commit import GroupCommitWriter
from cds.hook_rows import CardRow
from integrations.store.config import StoreConfig
from integrations.store.engine import make_engine
from integrations.store.models import Card, SeenJwtId
from tests.conftest import fresh_postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield make_store(tmp_path)
        return
    for url in fresh_postgres_database():
        made = make_store(tmp_path, url)
        try:
            yield made
        finally:
            made.engine.dispose()


def _writer(store: Store, **options: float) -> GroupCommitWriter:
    writer = GroupCommitWriter.for_sessions(store.session_factory, store.ledger)
    for name, value in options.items():
        setattr(writer, name, value)
    return writer


def _card(report_id: str | None = None) -> CardRow:
    card_uuid = str(uuid.uuid4())
    return CardRow(
        uuid=card_uuid,
        service_id="veritrace-patient-view",
        hook_instance=str(uuid.uuid4()),
        patient_id="p-gc",
        report_id=report_id,
        payload={"uuid": card_uuid, "summary": "s", "indicator": "info", "source": {"label": "x"}},
    )


def _entry(n: int) -> EntryDraft:
    return EntryDraft(kind="cds.hook", actor="cds-client:test", payload={"n": n}, patient_ref="Patient/p-gc")


def _later(seconds: float = 300) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _count(store: Store, model: type[Card] | type[SeenJwtId]) -> int:
    with store.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_concurrent_calls_share_transactions_and_every_row_lands(store: Store) -> None:
    writer = _writer(store)
    report = seed_report(store, patient_id="p-gc")
    calls = 40

    async def one_call(n: int) -> bool:
        claimed = await writer.claim_jti(f"iss\x1fjti-{n}", _later())
        await writer.record(cards=[_card(report.id), _card(report.id)], audit=_entry(n))
        return claimed

    async def all_calls() -> list[bool]:
        return await asyncio.gather(*(one_call(n) for n in range(calls)))

    before = store.ledger.size()
    assert asyncio.run(all_calls()) == [True] * calls
    assert _count(store, Card) == 2 * calls
    assert _count(store, SeenJwtId) == calls
    assert store.ledger.size() - before == calls
    assert {store.ledger.entry(i).payload["n"] for i in range(before, before + calls)} == set(range(calls))
    # 80 submissions in fewer transactions than calls: concurrent calls were batched.
    assert writer.batches < calls, writer.batches


def test_answered_only_after_commit_seen_from_another_engine(store: Store) -> None:
    writer = _writer(store)
    other = make_engine(StoreConfig(database_url=store.engine.url.render_as_string(hide_password=False)))
    card = _card()
    try:
        asyncio.run(writer.record(cards=[card], audit=_entry(1)))
        with other.connect() as conn:
            stored = conn.scalar(select(Card.payload).where(Card.uuid == card.uuid))
        assert stored == card.payload
    finally:
        other.dispose()


def test_replay_in_one_batch_first_claim_wins(store: Store) -> None:
    writer = _writer(store)

    async def burst() -> list[bool]:
        return await asyncio.gather(*(writer.claim_jti("iss\x1fsame", _later()) for _ in range(8)))

    assert sorted(asyncio.run(burst())) == [False] * 7 + [True]
    assert asyncio.run(writer.claim_jti("iss\x1fsame", _later())) is False


def test_replay_across_two_writers_on_one_database(store: Store) -> None:
    """Two writers stand for two API replicas: the database's key decides, whoever asks first."""
    first, second = _writer(store), _writer(store)
    assert asyncio.run(first.claim_jti("iss\x1fr1", _later())) is True
    assert asyncio.run(second.claim_jti("iss\x1fr1", _later())) is False

    async def race(key: str) -> list[bool]:
        return list(await asyncio.gather(first.claim_jti(key, _later()), second.claim_jti(key, _later())))

    for n in range(5):
        assert sorted(asyncio.run(race(f"iss\x1frace-{n}"))) == [False, True]


def test_expired_jti_may_be_reused_once_more(store: Store) -> None:
    writer = _writer(store)
    assert asyncio.run(writer.claim_jti("iss\x1fold", datetime.now(UTC) - timedelta(seconds=1))) is True
    assert asyncio.run(writer.claim_jti("iss\x1fold", _later())) is True  # its old token is expired
    assert asyncio.run(writer.claim_jti("iss\x1fold", _later())) is False


def test_expired_rows_are_purged(store: Store) -> None:
    writer = _writer(store, purge_every_s=3600.0)
    # The first write of a writer purges: nothing has expired yet, so "gone" stays until the next one.
    asyncio.run(writer.claim_jti("iss\x1fgone", datetime.now(UTC) - timedelta(seconds=5)))
    asyncio.run(writer.claim_jti("iss\x1fkept", _later()))
    assert _count(store, SeenJwtId) == 2
    fresh = _writer(store, purge_every_s=3600.0)
    asyncio.run(fresh.claim_jti("iss\x1fnew", _later()))
    with store.session_factory() as session:
        keys = set(session.scalars(select(SeenJwtId.key)))
    assert keys == {"iss\x1fkept", "iss\x1fnew"}


def test_a_call_the_database_refuses_fails_alone(store: Store) -> None:
    writer = _writer(store)
    report = seed_report(store, patient_id="p-gc")
    good = [_card(report.id) for _ in range(6)]
    bad = _card("no-such-report")  # foreign key to reports: refused by the database
    before = store.ledger.size()

    async def burst() -> list[object]:
        calls: list[Coroutine[Any, Any, object]] = [
            writer.record(cards=[card], audit=_entry(n)) for n, card in enumerate(good)
        ]
        calls.insert(3, writer.record(cards=[bad], audit=_entry(99)))
        calls.append(writer.claim_jti("iss\x1fbystander", _later()))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    # SQLAlchemy's wrapper on SQLite, psycopg's own error from the PostgreSQL fast path.
    assert isinstance(results[3], IntegrityError | psycopg.errors.IntegrityError)
    assert [r for n, r in enumerate(results) if n != 3] == [None] * 6 + [True]
    with store.session_factory() as session:
        stored = set(session.scalars(select(Card.uuid)))
    assert stored == {card.uuid for card in good}
    assert store.ledger.size() - before == 6  # the refused call's audit entry is not appended either


def test_writer_thread_leaves_when_idle_and_returns(store: Store) -> None:
    writer = _writer(store, idle_exit_s=0.05)
    assert asyncio.run(writer.claim_jti("iss\x1fidle-1", _later())) is True
    deadline = time.monotonic() + 5
    while writer._thread is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer._thread is None
    assert writer._rows is None  # its connection went with it
    assert asyncio.run(writer.claim_jti("iss\x1fidle-2", _later())) is True


def test_audit_needs_a_ledger(store: Store) -> None:
    writer = GroupCommitWriter.for_sessions(store.session_factory, ledger=None)
    with pytest.raises(ValueError, match="no ledger"):
        asyncio.run(writer.record(audit=_entry(1)))


def test_bad_batch_size_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommitWriter(store.engine, store.ledger, max_batch=0)


def test_a_whole_call_commits_only_if_its_claim_holds(store: Store) -> None:
    """Claim, cards and audit entry in one submission: a replay stores no card, logs its refusal."""
    writer = _writer(store)
    report = seed_report(store, patient_id="p-gc")
    before = store.ledger.size()
    first, second, unclaimed = _card(report.id), _card(report.id), _card(report.id)

    def call(card: CardRow, claim: tuple[str, datetime] | None, n: int) -> Coroutine[Any, Any, bool]:
        return writer.commit_call(
            claim=claim,
            cards=[card],
            audit=_entry(n),
            audit_if_replay=EntryDraft(kind="cds.hook", actor="cds-client:test", payload={"replay": n}),
        )

    async def race() -> list[bool]:
        claim = ("iss\x1fwhole", _later())
        return list(
            await asyncio.gather(call(first, claim, 1), call(second, claim, 2), call(unclaimed, None, 3))
        )

    held = asyncio.run(race())
    assert held == [True, False, True]
    with store.session_factory() as session:
        assert set(session.scalars(select(Card.uuid))) == {first.uuid, unclaimed.uuid}
    payloads = [store.ledger.entry(i).payload for i in range(before, store.ledger.size())]
    assert sorted(map(str, payloads)) == sorted(map(str, [{"n": 1}, {"replay": 2}, {"n": 3}]))
    # Across writers (replicas) too: the database already holds the key.
    other = _writer(store)
    late = _card(report.id)
    assert asyncio.run(other.commit_call(claim=("iss\x1fwhole", _later()), cards=[late])) is False
    with store.session_factory() as session:
        assert session.scalar(select(Card.uuid).where(Card.uuid == late.uuid)) is None


def test_close_commits_what_is_queued_and_a_later_call_restarts(store: Store) -> None:
    writer = _writer(store)

    async def queue_then_close() -> list[bool]:
        calls = [asyncio.ensure_future(writer.claim_jti(f"iss\x1fq{n}", _later())) for n in range(10)]
        await asyncio.sleep(0)  # all ten are queued
        await asyncio.to_thread(writer.close)
        return list(await asyncio.gather(*calls))

    assert asyncio.run(queue_then_close()) == [True] * 10
    assert writer._thread is None and writer._rows is None  # connection closed with the thread
    assert asyncio.run(writer.claim_jti("iss\x1fafter", _later())) is True
    writer.close()
    writer.close()  # closing a stopped writer is a no-op
    assert _count(store, SeenJwtId) == 11
