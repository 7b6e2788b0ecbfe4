"""The batch encoder hashes exactly what the verifier's ``encode_entry`` rebuilds from the stored row."""

from __future__ import annotations

import hashlib
import json

import pydantic
import pytest

from audit.entry import EntryDraft, encode_entry
from audit.entry_batch import AppendedBatch, encode_batch, prepare_batch

DRAFTS = [
    EntryDraft(kind="fhir.read", actor="worker:io", payload={"r": "Observation/1", "v": 0.5}),
    EntryDraft(kind="fhir.read", actor="worker:io", payload={"é": '\u2028"q"\\'}, patient_ref="Patient/ü"),
    EntryDraft(kind="dicom.received", actor="scp", payload={"big": "x" * 300}, study_uid="1.2.840.1"),
    EntryDraft(kind="fhir.read", actor="worker:io", payload={}, patient_ref="Patient/ü"),
]


def test_rows_and_leaves_match_the_verifiers_encoding() -> None:
    encoded = encode_batch(prepare_batch(DRAFTS), 41, "2025-11-28T20:54:00.123456Z", inline_limit=100)
    assert [row[0] for row in encoded.entry_rows] == [41, 42, 43, 44]
    for row, leaf in zip(encoded.entry_rows, encoded.leaves, strict=True):
        index, recorded_at, kind, actor, patient_ref, study_uid, digest, payload, stored_leaf = row
        data = encode_entry(
            index=index,
            kind=kind,
            actor=actor,
            patient_ref=patient_ref,
            study_uid=study_uid,
            recorded_at=recorded_at,
            payload_digest=digest,
            payload_json=payload,
        )
        assert hashlib.sha256(b"\x00" + data).digest() == leaf == stored_leaf
        assert json.loads(data)["index"] == index
    big = encoded.entry_rows[2]
    assert big[7] is None and encoded.blobs == {big[6]: json.dumps({"big": "x" * 300}, separators=(",", ":"))}
    assert big[6] == "sha256:" + hashlib.sha256(encoded.blobs[big[6]].encode()).hexdigest()


def test_appended_batch_reads_like_a_list_of_appended_entries() -> None:
    leaves = [bytes([i]) * 32 for i in range(3)]
    batch = AppendedBatch(7, "2025-01-01T00:00:00.000000Z", leaves)
    assert len(batch) == 3 and [e.index for e in batch] == [7, 8, 9]
    assert batch[-1].index == 9 and batch[-1].leaf_hash == leaves[2].hex()
    assert [e.index for e in batch[1:]] == [8, 9] and batch == list(batch)
    with pytest.raises(IndexError):
        batch[3]


def test_a_refused_draft_names_the_field_but_not_the_value() -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        EntryDraft(kind="fhir.read", actor="a", payload=["Patient/secret-123"])  # type: ignore[arg-type]
    assert "payload" in str(refused.value) and "secret-123" not in str(refused.value)
    with pytest.raises(pydantic.ValidationError) as refused:
        EntryDraft(kind="fhir.read", actor="a", payload={}, study_uid="MRN 4711")
    assert "study_uid" in str(refused.value) and "4711" not in str(refused.value)


def test_a_draft_keeps_the_payload_it_was_given() -> None:
    payload = {"status": 200}
    draft = EntryDraft(kind="cds.hook", actor="a", payload=payload)
    payload["status"] = 500
    payload["late"] = True
    assert draft.payload == {"status": 200}
    assert prepare_batch([draft]).payload_texts == ['{"status":200}']
