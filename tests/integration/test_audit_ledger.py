"""The ledger on real SQLite and PostgreSQL: appends, proofs, checkpoints, triggers, tamper detection."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit import BadRange, Ledger, LedgerConfig, ProofError, UnknownEntry, upgrade_ledger_schema
from audit.anchor import anchored_notes
from audit.checkpoint_note import open_checkpoint
from audit.entry import encode_entry
from audit.hashing import hash_children, hash_leaf
from audit.node_store import LedgerIntegrityError
from audit.reference_tree import mth
from audit.signing import generate_key
from audit.tree_layout import STORED_MIN_LEVEL
from tests.conftest import fresh_postgres_database

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path / 'ledger.db'}"])
    else:
        urls = fresh_postgres_database()
    url = next(urls)
    eng = sa.create_engine(url)
    upgrade_ledger_schema(eng)
    try:
        yield eng
    finally:
        eng.dispose()
        for _ in urls:  # drops the PostgreSQL database
            pass


def _config(tmp_path: Path, **overrides: object) -> LedgerConfig:
    return LedgerConfig(key_dir=tmp_path / "keys", anchor_dir=tmp_path / "anchor", **overrides)  # type: ignore[arg-type]


@pytest.fixture
def ledger(engine: sa.Engine, tmp_path: Path) -> Ledger:
    config = _config(tmp_path, checkpoint_every=16)
    generate_key(config.key_dir, config.origin)
    return Ledger(engine, config)


def _fill(ledger: Ledger, count: int) -> None:
    for i in range(count):
        ledger.append(
            "fhir.read",
            "worker:io",
            {"resource": f"Observation/{i}/_history/1", "n": i},
            patient_ref="Patient/p1",
        )


def _stored_leaves(engine: sa.Engine) -> list[bytes]:
    with engine.connect() as conn:
        return [
            bytes(h)
            for (h,) in conn.exec_driver_sql("SELECT leaf_hash FROM audit_entries ORDER BY leaf_index")
        ]


def test_upgrade_is_idempotent(engine: sa.Engine) -> None:
    upgrade_ledger_schema(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM audit_alembic_version").scalar() == "audit_0003"


def test_appends_are_contiguous_and_leaf_hashes_are_of_the_canonical_entry(ledger: Ledger) -> None:
    first = ledger.append(
        "dicom.received", "scp:VERITRACE", {"sop": "1.2.3.4", "bytes": 1024}, study_uid="1.2.3"
    )
    batch = ledger.append_many(
        [
            {"kind": "model.invoked", "actor": "worker:gpu", "payload": {"step": i, "p": 0.25}}
            for i in range(5)
        ]
    )
    assert [first.index, *(b.index for b in batch)] == list(range(6))
    stored = ledger.entry(0)
    assert stored.payload == {"sop": "1.2.3.4", "bytes": 1024} and stored.study_uid == "1.2.3"
    canonical = encode_entry(
        index=0,
        kind="dicom.received",
        actor="scp:VERITRACE",
        patient_ref=None,
        study_uid="1.2.3",
        recorded_at=stored.recorded_at,
        payload_digest=stored.payload_digest,
        payload_json='{"bytes":1024,"sop":"1.2.3.4"}',
    )
    assert (
        json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        == canonical
    )
    assert hashlib.sha256(b"\x00" + canonical).hexdigest() == first.leaf_hash == stored.leaf_hash


def test_roots_and_proofs_agree_with_the_rfc_definitions(ledger: Ledger, engine: sa.Engine) -> None:
    _fill(ledger, 7)
    ledger.append_many([{"kind": "fhir.search", "actor": "w", "payload": {"i": i}} for i in range(30)])
    _fill(ledger, 4)
    leaves = _stored_leaves(engine)
    assert len(leaves) == ledger.size() == 41
    for size in range(0, 42):
        assert ledger.root(size) == mth(leaves[:size])
    for size in (1, 2, 7, 16, 17, 33, 41):
        for index in {0, size // 2, size - 1}:
            proof = ledger.inclusion_proof(index, size)
            assert proof.leaf_hash == leaves[index] and proof.root_hash == mth(leaves[:size])
            proof.verify()
        for first in {1, size // 3 or 1, size}:
            ledger.consistency_proof(first, size).verify()


def test_bad_ranges_and_unknown_entries(ledger: Ledger) -> None:
    _fill(ledger, 3)
    for call in (
        lambda: ledger.inclusion_proof(3, 3),
        lambda: ledger.inclusion_proof(0, 4),
        lambda: ledger.consistency_proof(0, 2),
        lambda: ledger.consistency_proof(3, 2),
        lambda: ledger.root(4),
    ):
        with pytest.raises(BadRange):
            call()
    with pytest.raises(UnknownEntry):
        ledger.entry(3)


def test_bad_input_is_refused_before_anything_is_written(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="kind"):
        ledger.append("Not A Kind", "a", {})
    with pytest.raises(ValueError, match="NaN"):
        ledger.append("fhir.read", "a", {"score": float("nan")})
    with pytest.raises(ValueError, match="study_uid"):
        ledger.append("fhir.read", "a", {}, study_uid="not-a-uid")
    with pytest.raises(ValueError):
        ledger.append_many([{"kind": "fhir.read", "actor": "a", "payload": {}}, {"kind": "x", "payload": {}}])
    assert ledger.size() == 0


def test_large_payloads_are_stored_once_by_digest(engine: sa.Engine, tmp_path: Path) -> None:
    config = _config(tmp_path, inline_payload_limit=100)
    ledger = Ledger(engine, config)
    trace = {"steps": ["x" * 50] * 10}
    a = ledger.append("analysis.completed", "worker:gpu", trace)
    ledger.append("analysis.completed", "worker:gpu", trace)
    stored = ledger.entry(a.index)
    assert not stored.payload_inline and stored.payload == trace
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_payloads").scalar() == 1
    assert ledger.verify().ok


def test_tables_refuse_update_and_delete(ledger: Ledger, engine: sa.Engine) -> None:
    _fill(ledger, 1 << STORED_MIN_LEVEL)  # the first stored node: row triggers fire only on rows
    ledger.checkpoint()
    statements = [
        "UPDATE audit_entries SET actor = 'mallory' WHERE leaf_index = 1",
        "DELETE FROM audit_entries WHERE leaf_index = 2",
        "UPDATE audit_nodes SET hash = hash",
        "DELETE FROM audit_nodes",
        "DELETE FROM audit_checkpoints",
    ]
    if engine.dialect.name == "postgresql":
        statements += ["TRUNCATE audit_entries", "TRUNCATE audit_nodes", "TRUNCATE audit_checkpoints"]
    for statement in statements:
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    assert ledger.verify().ok


def test_checkpoints_are_signed_anchored_and_strictly_increasing(ledger: Ledger, tmp_path: Path) -> None:
    _fill(ledger, 40)  # checkpoint_every=16: taken at the first entry, then at 16 and 32
    manual = [ledger.checkpoint(), ledger.checkpoint()]
    assert manual[0].size == manual[1].size == 40 and manual[1].timestamp_ms > manual[0].timestamp_ms
    notes = anchored_notes(tmp_path / "anchor")
    sizes = [size for size, _, _ in notes]
    assert sizes == [1, 16, 32, 40, 40]
    stamps = [ms for _, ms, _ in notes]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    for size, _, note in notes:
        checkpoint = open_checkpoint(note, ledger.verifiers(), ledger.config.origin)
        assert checkpoint.root_hash == ledger.root(size)
    latest = ledger.latest_checkpoint()
    assert latest is not None and latest.note == manual[1].note
    assert ledger.trusted_checkpoint() == manual[1]
    key_file = ledger.config.key_dir / "ledger.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_key_rotation_keeps_old_checkpoints_verifiable(ledger: Ledger) -> None:
    _fill(ledger, 3)
    old = ledger.checkpoint()
    generate_key(ledger.config.key_dir, ledger.config.origin, rotate=True)
    _fill(ledger, 2)
    new = ledger.checkpoint()
    assert new.key_id != old.key_id and len(ledger.verifiers()) == 2
    report = ledger.verify()
    assert report.ok and report.trusted_size == 5


def _bypass(engine: sa.Engine, statement: str, params: dict | None = None) -> None:
    """Run a statement as the database owner would, around the append-only triggers."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.execute(sa.text(statement), params or {})
        else:
            triggers = [
                (name, sql)
                for name, sql in conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                )
            ]
            for name, _ in triggers:
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
            conn.execute(sa.text(statement), params or {})
            for _, sql in triggers:
                conn.exec_driver_sql(sql)


def test_verify_names_a_manually_edited_row(ledger: Ledger, engine: sa.Engine) -> None:
    _fill(ledger, 20)
    ledger.checkpoint()
    assert ledger.verify().ok
    _bypass(engine, "UPDATE audit_entries SET patient_ref = 'Patient/other' WHERE leaf_index = 13")
    report = ledger.verify()
    assert not report.ok and report.first_bad_index == 13 and "altered" in (report.problem or "")


def test_verify_detects_a_deleted_tail_against_the_last_checkpoint(ledger: Ledger, engine: sa.Engine) -> None:
    _fill(ledger, 20)
    ledger.checkpoint()
    _bypass(engine, "DELETE FROM audit_entries WHERE leaf_index >= 17")
    _bypass(engine, "DELETE FROM audit_nodes WHERE (node_index + 1) * power(2, level) > 17")
    report = ledger.verify()
    assert not report.ok and report.first_bad_index == 17 and "tail deleted" in (report.problem or "")


def _rewrite_history(engine: sa.Engine, index: int, size: int) -> None:
    """What an attacker with the database (not the key) does: change an entry and every hash above it."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT kind, actor, patient_ref, study_uid, recorded_at FROM audit_entries WHERE leaf_index = "
            + str(index)
        ).one()
    payload = '{"forged":true}'
    digest = "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
    leaf = hash_leaf(
        encode_entry(
            index=index,
            kind=row[0],
            actor=row[1],
            patient_ref=row[2],
            study_uid=row[3],
            recorded_at=row[4],
            payload_digest=digest,
            payload_json=payload,
        )
    )
    _bypass(
        engine,
        "UPDATE audit_entries SET payload = :p, payload_digest = :d, leaf_hash = :h WHERE leaf_index = :i",
        {"p": payload, "d": digest, "h": leaf, "i": index},
    )
    leaves = _stored_leaves(engine)
    level, position, value = 0, index, leaf
    while (position | 1) < len(leaves) >> level:
        width = 1 << level
        sibling = position ^ 1
        other = mth(leaves[sibling * width : (sibling + 1) * width])
        value = hash_children(other, value) if position & 1 else hash_children(value, other)
        level, position = level + 1, position >> 1
        _bypass(
            engine,
            "UPDATE audit_nodes SET hash = :h WHERE level = :l AND node_index = :i",
            {"h": value, "l": level, "i": position},
        )


def test_rewritten_history_fails_verify_and_the_consistency_proof(ledger: Ledger, engine: sa.Engine) -> None:
    _fill(ledger, 10)
    ledger.checkpoint()  # size 10 is signed; later checkpoints are at 16 and on demand
    trusted = ledger.root(10)
    _rewrite_history(engine, 3, 10)
    assert ledger.root(10) != trusted  # the database now serves a forked history
    ledger = Ledger(engine, ledger.config)  # a restarted process: it trusts what the database holds
    _fill(ledger, 8)  # and keeps appending on top of the fork
    proof = ledger.consistency_proof(10, 18)
    with pytest.raises(ProofError):
        proof.model_copy(update={"first_root": trusted}).verify()
    report = ledger.verify()
    # The checkpoint at the first entry still matches, the one at 10 does not: entries 1..9 are suspect.
    assert not report.ok and report.first_bad_index == 1
    assert "checkpoint of size 10" in (report.problem or "")


def test_only_nodes_from_the_stored_level_up_are_written(ledger: Ledger, engine: sa.Engine) -> None:
    ledger.append_many([{"kind": "fhir.read", "actor": "a", "payload": {"i": i}} for i in range(100)])
    with engine.connect() as conn:
        stored = set(conn.exec_driver_sql("SELECT level, node_index FROM audit_nodes").all())
    assert stored == {(level, index) for level in range(STORED_MIN_LEVEL, 7) for index in range(100 >> level)}
    leaves = _stored_leaves(engine)
    for index in (0, 15, 16, 63, 64, 95, 96, 99):  # inside stored blocks and in the ragged tail
        proof = ledger.inclusion_proof(index, 100)
        assert proof.root_hash == mth(leaves) and proof.leaf_hash == leaves[index]
        proof.verify()


def _legacy_low_nodes(engine: sa.Engine, size: int) -> list[tuple[int, int, bytes]]:
    """Nodes below STORED_MIN_LEVEL, as logs written before that change hold them."""
    leaves = _stored_leaves(engine)[:size]
    return [
        (level, index, mth(leaves[index << level : (index + 1) << level]))
        for level in range(1, STORED_MIN_LEVEL)
        for index in range(size >> level)
    ]


def test_a_log_that_still_holds_lower_nodes_verifies_and_their_edits_are_caught(
    ledger: Ledger, engine: sa.Engine
) -> None:
    _fill(ledger, 40)
    legacy = _legacy_low_nodes(engine, 40)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO audit_nodes (level, node_index, hash) VALUES (:l, :i, :h)"),
            [{"l": level, "i": index, "h": value} for level, index, value in legacy],
        )
    ledger.checkpoint()
    assert ledger.verify().ok
    leaves = _stored_leaves(engine)
    assert ledger.inclusion_proof(21, 40).root_hash == mth(leaves)
    _bypass(
        engine, "UPDATE audit_nodes SET hash = :h WHERE level = 2 AND node_index = 5", {"h": b"\x07" * 32}
    )
    report = ledger.verify()
    assert not report.ok and report.first_bad_index == 20 and "20..23" in (report.problem or "")


def test_a_missing_leaf_under_a_recomputed_node_is_an_integrity_error(
    ledger: Ledger, engine: sa.Engine
) -> None:
    _fill(ledger, 40)
    _bypass(engine, "DELETE FROM audit_entries WHERE leaf_index = 34")
    with pytest.raises(LedgerIntegrityError, match="1 tree node"):
        ledger.inclusion_proof(33, 39)  # needs the pair (34, 35) recomputed from its leaves
    report = ledger.verify()
    assert not report.ok and report.first_bad_index == 34


def test_writers_that_interleave_keep_one_contiguous_log(engine: sa.Engine, tmp_path: Path) -> None:
    """Each ledger's idea of the log's end goes stale whenever the other appends (PostgreSQL: its
    one-round-trip append must then write nothing and fall back to reading the size under the lock)."""
    config = _config(tmp_path, checkpoint_every=1000)
    generate_key(config.key_dir, config.origin)
    first, second = Ledger(engine, config), Ledger(engine, config)
    writers = [first, first, second, first, second, second, second, first] * 5
    appended = [
        writer.append("fhir.read", "a" if writer is first else "b", {"n": n})
        for n, writer in enumerate(writers)
    ]
    assert [entry.index for entry in appended] == list(range(len(writers)))
    with engine.connect() as conn:
        actors = [a for (a,) in conn.exec_driver_sql("SELECT actor FROM audit_entries ORDER BY leaf_index")]
    assert actors == ["a" if writer is first else "b" for writer in writers]
    leaves = _stored_leaves(engine)
    assert first.root() == second.root() == mth(leaves)
    first.checkpoint()
    assert second.verify().ok


def test_verify_reports_progress_up_to_the_log_size(tmp_path: Path) -> None:
    """Verify-now in the review app shows how far a long run got; the last report is the whole log."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'progress.db'}")
    upgrade_ledger_schema(engine)
    ledger = Ledger(engine, LedgerConfig(key_dir=tmp_path / "keys", anchor_dir=None))
    ledger.append_many([{"kind": "k", "actor": "a", "payload": {"n": n}} for n in range(25)])
    seen: list[int] = []
    assert ledger.verify(progress=seen.append).ok
    assert seen and seen[-1] == 25 and seen == sorted(seen)
