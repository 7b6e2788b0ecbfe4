"""Many worker processes appending at once to PostgreSQL still make one linear log."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit import Ledger, LedgerConfig, upgrade_ledger_schema
from audit.reference_tree import mth
from audit.signing import generate_key
from tests.conftest import fresh_postgres_database

pytestmark = pytest.mark.postgres


def _append_from_worker(url: str, key_dir: str, anchor_dir: str, worker: int, count: int) -> None:
    engine = sa.create_engine(url, pool_size=1)
    config = LedgerConfig(key_dir=Path(key_dir), anchor_dir=Path(anchor_dir), checkpoint_every=500)
    ledger = Ledger(engine, config)
    for i in range(count):
        ledger.append(
            "cds.hook", f"worker:{worker}", {"worker": worker, "i": i}, patient_ref=f"Patient/{i % 7}"
        )
    engine.dispose()


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[str, LedgerConfig]]:
    for url in fresh_postgres_database():
        engine = sa.create_engine(url)
        upgrade_ledger_schema(engine)
        engine.dispose()
        config = LedgerConfig(key_dir=tmp_path / "keys", anchor_dir=tmp_path / "anchor", checkpoint_every=500)
        generate_key(config.key_dir, config.origin)
        yield url, config


def _run(url: str, config: LedgerConfig, workers: int, each: int) -> None:
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(
            target=_append_from_worker, args=(url, str(config.key_dir), str(config.anchor_dir), w, each)
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0
    engine = sa.create_engine(url)
    try:
        ledger = Ledger(engine, config)
        total = workers * each
        with engine.connect() as conn:
            count, low, high = conn.exec_driver_sql(
                "SELECT count(*), min(leaf_index), max(leaf_index) FROM audit_entries"
            ).one()
            per_worker: dict[str, int] = dict(
                conn.exec_driver_sql("SELECT actor, count(*) FROM audit_entries GROUP BY actor").all()
            )
            leaves = [
                bytes(h)
                for (h,) in conn.exec_driver_sql("SELECT leaf_hash FROM audit_entries ORDER BY leaf_index")
            ]
        assert (count, low, high) == (total, 0, total - 1)
        assert per_worker == {f"worker:{w}": each for w in range(workers)}
        assert ledger.root() == mth(leaves)  # one tree: the stored nodes agree with the leaves in order
        report = ledger.verify()  # every checkpoint any worker signed is a prefix of that one log
        assert report.ok, report.problem
        assert report.checkpoints_checked >= 2 * (total // 500)
    finally:
        engine.dispose()


def test_four_workers_make_one_linear_log(postgres: tuple[str, LedgerConfig]) -> None:
    _run(*postgres, workers=4, each=250)


@pytest.mark.slow
def test_eight_workers_times_a_thousand_make_one_linear_log(postgres: tuple[str, LedgerConfig]) -> None:
    _run(*postgres, workers=8, each=1000)
