"""Fuzzing the DICOM ingest path (hypothesis) on PostgreSQL: the receiver, then the live acceptor.

Seeds are real objects from pydicom's test files (explicit and implicit VR, big endian, deflated,
encapsulated JPEG 2000 and RLE, RT plan, SR), mutated by bit flips, truncation, inserted bytes and
length fields set to edge values. The rules checked are the ingest path's own:

- every received file is answered with a DICOM status from the C-STORE set: success, "cannot
  understand" (0xC000) or "data set does not match" (0xA900); never the index-failure status
  (0x0110, which is for a database that is down) and never an exception;
- nothing is left under the spool's `tmp/` beyond the temp file its caller removes, no object is spooled
  for a refused file, and the index has no half rows: every instance row points at a spooled file with
  its digest, every study row counts exactly its instances;
- the live acceptor, after a stream of mutated PDUs and associations, still answers C-ECHO and stores a
  valid instance.

Runs are derandomized with modest example counts, so CI spends a few seconds and every machine fails
the same way.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from integrations.dicom import pdu
from integrations.dicom.batched_indexer import BatchedIndexer, IndexWriter
from integrations.dicom.config import DicomConfig
from integrations.dicom.file_meta import part10_header
from integrations.dicom.intake_journal import JOURNAL_DIR, IntakeJournal
from integrations.dicom.receipts import ReceiptBatcher
from integrations.dicom.receive import InstanceReceiver
from integrations.dicom.scp import StorageScp
from integrations.dicom.spool import Spool
from integrations.dicom.status import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, STATUS_SUCCESS
from integrations.dicom.synthetic import make_image
from integrations.store.models import Instance, Study
from tests.integration.dicom_support import DicomStore, make_dicom_store
from tests.security.byte_mutations import Seed, mutated
from tests.security.dicom_wire import (
    RELEASE_RQ,
    VERIFICATION,
    InstanceSeed,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    exchange,
    instance_seed,
    p_data,
)

pytestmark = pytest.mark.postgres

SEED_FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",  # encapsulated pixel data
    "SC_rgb_rle.dcm",
    "image_dfl.dcm",  # deflated
    "rtplan.dcm",  # sequences, no pixel data
    "test-SR.dcm",
]
SEEDS = [instance_seed(Path(str(get_testdata_file(name)))) for name in SEED_FILES]
STORE_STATUSES = {STATUS_SUCCESS, STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH}
STATUS_UNRECOGNISED_OPERATION = 0x0211
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    # The store and the acceptor persist across examples on purpose: what one example leaves behind is
    # what the next one and the final checks must cope with.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@pytest.fixture
def store(tmp_path: Path, postgres_url: str) -> Iterator[DicomStore]:
    made = make_dicom_store(tmp_path, postgres_url)
    yield made
    made.engine.dispose()


def part10(seed: InstanceSeed, data_set: bytes) -> bytes:
    """The file the acceptor writes for a C-STORE: our File Meta Information, then the sender's bytes."""
    header = part10_header(
        sop_class_uid=seed.sop_class,
        sop_instance_uid=seed.sop_instance,
        transfer_syntax_uid=seed.transfer_syntax,
        source_ae="FUZZER",
    )
    return header + data_set


def whole_file(seed: InstanceSeed) -> Seed:
    """The Part 10 file as a seed: the data set's fields shifted behind the header, plus the transfer
    syntax UID's value (STOW-RS takes the File Meta Information from the client)."""
    raw = part10(seed, seed.seed.data)
    shift = len(raw) - len(seed.seed.data)
    syntax_at = raw.index(b"\x02\x00\x10\x00UI") + 8
    syntax_range = (syntax_at, syntax_at + int.from_bytes(raw[syntax_at - 2 : syntax_at], "little"))
    return Seed(
        raw,
        tuple((offset + shift, size, big) for offset, size, big in seed.seed.length_fields),
        (syntax_range, *((start + shift, end + shift) for start, end in seed.seed.value_ranges)),
    )


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def assert_index_consistent(store: DicomStore, spool: Spool) -> int:
    """No half rows: every instance has its spooled file with its digest, every study counts its
    instances, and no spooled object lacks a row. Returns the number of instances."""
    with store.sessions() as session:
        instances = list(session.scalars(select(Instance)))
        for study in session.scalars(select(Study)):
            counted = session.scalar(select(func.count(Instance.id)).where(Instance.study_id == study.id))
            assert study.instance_count == counted, study.study_uid
    for instance in instances:
        path = spool.absolute(instance.spool_path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == instance.sha256
    assert files_under(spool.objects_dir) == {spool.absolute(i.spool_path) for i in instances}
    assert not spool.unfinished_writes()
    return len(instances)


def start_indexer(spool: Spool, store: DicomStore, batcher: ReceiptBatcher) -> BatchedIndexer:
    journal = IntakeJournal(spool.root / JOURNAL_DIR, fsync=False)
    indexer = BatchedIndexer(IndexWriter(store.engine), batcher, journal)
    indexer.start()
    return indexer


def test_receiver_answers_mutated_instances_with_a_store_status(tmp_path: Path, store: DicomStore) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0, fsync=False)
    batcher = ReceiptBatcher(store.ledger, actor="fuzz")
    indexer = start_indexer(spool, store, batcher)
    receiver = InstanceReceiver(spool, indexer)
    key = object()
    statuses: list[int] = []

    data_sets = st.integers(0, len(SEEDS) - 1).flatmap(
        lambda index: st.tuples(st.just(SEEDS[index]), mutated([SEEDS[index].seed], focus=2048))
    )
    # A whole file mutated (File Meta Information included), as STOW-RS receives them.
    whole_files = st.sampled_from(SEEDS).flatmap(
        lambda seed: st.tuples(st.just(seed), mutated([whole_file(seed)], focus=512), st.just(True))
    )

    @settings(FUZZ, max_examples=150)
    @given(st.one_of(data_sets.map(lambda pair: (*pair, False)), whole_files))
    def receive(case: tuple[InstanceSeed, bytes, bool]) -> None:
        seed, data, whole = case
        objects_before = files_under(spool.objects_dir)
        with store.sessions() as session:
            rows_before = session.scalar(select(func.count(Instance.id)))
        incoming = spool.incoming()
        incoming.write(data if whole else part10(seed, data))
        written = incoming.finish()
        result = receiver.receive(
            written.path,
            calling_ae="FUZZER",
            association_key=key,
            expected_sop_class=seed.sop_class,
            expected_sop_instance=seed.sop_instance,
            written=written,
        )
        statuses.append(result.status)
        assert result.status in STORE_STATUSES, (hex(result.status), result.reason)
        left = spool.unfinished_writes()
        if result.status == STATUS_SUCCESS:
            assert not left  # moved into the spool
            assert indexer.wait_idle(60)  # the row follows the acknowledgement on the indexer thread
            with store.sessions() as session:
                assert session.scalar(select(func.count(Instance.id)).where(Instance.sha256 == result.sha256))
        else:
            assert left == [written.path]  # only the temp file its caller deletes
            assert files_under(spool.objects_dir) == objects_before
            with store.sessions() as session:
                assert session.scalar(select(func.count(Instance.id))) == rows_before
        written.path.unlink(missing_ok=True)  # the caller's part (the association does this)

    receive()
    indexer.association_ended(key)
    indexer.stop()
    stored = assert_index_consistent(store, spool)
    # The fuzzer reached every outcome, so the assertions above were exercised on each.
    assert set(statuses) == STORE_STATUSES and stored > 0, sorted(set(statuses))
    received = [e for e in store.entries("dicom.received")]
    assert sum(len(e.payload["instances"]) for e in received) == statuses.count(STATUS_SUCCESS)


def _replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


CT_SMALL_STUDY = b"1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
PATIENT_ID = b"\x10\x00\x20\x00LO\x04\x001CT1"  # (0010,0020) LO, 4 bytes


@pytest.mark.parametrize(
    ("case", "file"),
    [
        # Found by the fuzzer above: PostgreSQL refused the row after the file was spooled, so the
        # sender was told to retry (0x0110) something that can never be indexed, and the file stayed.
        (
            "NUL in the study UID",
            lambda s: part10(
                s, _replaced(s.seed.data, CT_SMALL_STUDY, CT_SMALL_STUDY.replace(b"5962", b"59\x002"))
            ),
        ),
        (
            "NUL in the patient id",
            lambda s: part10(s, _replaced(s.seed.data, PATIENT_ID, PATIENT_ID[:-3] + b"\x00T1")),
        ),
        (
            "transfer syntax longer than a UID",
            lambda s: part10(replace(s, transfer_syntax="1.2.840.10008.1.2.1." + "9" * 50), s.seed.data),
        ),
    ],
)
def test_values_the_index_cannot_hold_are_refused_before_spooling(
    tmp_path: Path, store: DicomStore, case: str, file: Callable[[InstanceSeed], bytes]
) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0, fsync=False)
    indexer = start_indexer(spool, store, ReceiptBatcher(store.ledger, actor="fuzz"))
    receiver = InstanceReceiver(spool, indexer)
    incoming = spool.incoming()
    incoming.write(file(SEEDS[0]))
    written = incoming.finish()
    try:
        result = receiver.receive(written.path, calling_ae="FUZZER", association_key=case, written=written)
    finally:
        indexer.stop()
    assert (result.status, files_under(spool.objects_dir)) == (STATUS_CANNOT_UNDERSTAND, set()), result.reason


# --------------------------------------------------------------------------------- the live acceptor

CONTEXTS = [(VERIFICATION, ["1.2.840.10008.1.2"])] + [(s.sop_class, [s.transfer_syntax]) for s in SEEDS]
ASSOCIATE = associate_rq(CONTEXTS)


def context_id_of(index: int) -> int:
    """Context ids follow CONTEXTS: 1 is Verification, then 3, 5, ... for SEEDS[index]."""
    return 2 * (index + 1) + 1


def store_stream(index: int, data_set: bytes, message_id: int = 1) -> bytes:
    seed = SEEDS[index]
    context = context_id_of(index)
    command = c_store_rq(seed.sop_class, seed.sop_instance, message_id)
    return p_data(context, command, is_command=True) + p_data(context, data_set, is_command=False)


def valid_session() -> bytes:
    """Associate, C-ECHO, store CT_small, release: the bytes a well-behaved PACS sends."""
    return (
        ASSOCIATE + p_data(1, c_echo_rq(), is_command=True) + store_stream(0, SEEDS[0].seed.data) + RELEASE_RQ
    )


@st.composite
def hostile_connections(draw: st.DrawFn) -> tuple[str, bytes]:
    """One connection's bytes: noise, a mutated request, a mutated session, or a mutated data set."""
    kind = draw(st.sampled_from(["noise", "associate", "session", "data-set"]))
    if kind == "noise":
        return kind, draw(st.binary(max_size=300))
    if kind == "associate":
        return kind, draw(mutated([Seed(ASSOCIATE)], focus=len(ASSOCIATE)))
    if kind == "session":
        after = draw(mutated([Seed(valid_session()[len(ASSOCIATE) :])], focus=1024))
        return kind, ASSOCIATE + after
    index = draw(st.integers(0, len(SEEDS) - 1))
    data_set = draw(mutated([SEEDS[index].seed], focus=2048))
    return kind, ASSOCIATE + store_stream(index, data_set) + RELEASE_RQ


def wait_for_idle(scp: StorageScp) -> None:
    """Associations end on their own threads after closing the socket; wait for their bookkeeping."""
    deadline = time.monotonic() + 30
    while scp.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scp.active_associations == 0


def test_live_acceptor_survives_mutated_associations(tmp_path: Path, store: DicomStore) -> None:
    config = DicomConfig(
        spool_dir=tmp_path / "spool", port=0, min_free_bytes=0, fsync=False, network_timeout_s=30
    )
    scp = StorageScp(config, store.sessions, store.ledger)
    scp.start()
    seen: dict[str, int] = {}
    try:
        # The unmutated session first: the stream below is only meaningful if it succeeds.
        valid = exchange(scp.port, valid_session())
        assert valid.pdu_types == [pdu.A_ASSOCIATE_AC, pdu.P_DATA_TF, pdu.P_DATA_TF, pdu.A_RELEASE_RP]
        assert valid.statuses == [STATUS_SUCCESS, STATUS_SUCCESS]

        @settings(FUZZ, max_examples=120)
        @given(hostile_connections())
        def connect(case: tuple[str, bytes]) -> None:
            kind, data = case
            seen[kind] = seen.get(kind, 0) + 1
            replies = exchange(scp.port, data)
            assert replies.trailing == b"", "the acceptor sent part of a PDU"
            known = {pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.P_DATA_TF, pdu.A_RELEASE_RP, pdu.A_ABORT}
            assert set(replies.pdu_types) <= known, replies.pdu_types
            assert set(replies.statuses) <= STORE_STATUSES | {STATUS_UNRECOGNISED_OPERATION}
            if kind == "data-set":
                # The protocol is intact, only the data set is not: one answer, then an orderly release.
                assert replies.pdu_types == [pdu.A_ASSOCIATE_AC, pdu.P_DATA_TF, pdu.A_RELEASE_RP]
                assert len(replies.statuses) == 1 and replies.statuses[0] in STORE_STATUSES

        connect()
        wait_for_idle(scp)
        assert set(seen) == {"noise", "associate", "session", "data-set"}

        ae = AE("AFTERFUZZ")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        association = ae.associate("127.0.0.1", scp.port, ae_title="VERITRACE")
        assert association.is_established
        assert association.send_c_echo().Status == STATUS_SUCCESS
        image = make_image(study_uid=generate_uid(), seed=7)
        assert association.send_c_store(image).Status == STATUS_SUCCESS
        association.release()
        wait_for_idle(scp)
    finally:
        scp.stop()
    with store.sessions() as session:
        found = session.scalar(select(Instance).where(Instance.sop_instance_uid == str(image.SOPInstanceUID)))
        assert found is not None
    assert_index_consistent(store, scp.spool)
