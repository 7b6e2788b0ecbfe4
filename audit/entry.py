"""Ledger entries: what callers hand in, what is stored, and the exact bytes that are hashed.

The hashed form is canonical JSON built from the stored columns alone, so a verifier that reads the
row back recomputes the same bytes: the timestamp is kept as the very string that was hashed, and the
payload as its canonical text (or, for large traces, only its digest, the text living in
``audit_payloads``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic

from audit.canonical import json_string

ENTRY_FORMAT_VERSION = 1
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
DICOM_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
KNOWN_KINDS_LIMIT = 1024
_KNOWN_KINDS: set[str] = set()
"""Kinds already matched: a log uses a few dozen, and the regex ran once per appended entry."""


class EntryDraft(pydantic.BaseModel):
    """One entry as the rest of Veritrace hands it in; validated before the sequencer lock is taken."""

    # Inputs are patient data: a refusal names the field, never repeats the value.
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: str = pydantic.Field(min_length=1, max_length=64)
    actor: str = pydantic.Field(min_length=1, max_length=256)
    payload: pydantic.InstanceOf[Mapping[str, Any]]
    """A shallow copy, as pydantic's ``Mapping`` validation made, without checking each key here:
    canonicalisation walks it anyway, at append time, and refuses what JSON cannot hold with a message
    naming where it sits."""
    patient_ref: str | None = pydantic.Field(default=None, min_length=1, max_length=256)
    study_uid: str | None = pydantic.Field(default=None, min_length=1, max_length=64)

    @pydantic.field_validator("kind")
    @classmethod
    def _kind_is_dotted_name(cls, value: str) -> str:
        if value in _KNOWN_KINDS:
            return value
        if not KIND_PATTERN.match(value):
            raise ValueError('kind must be a dotted lower-case name such as "fhir.read"')
        if len(_KNOWN_KINDS) < KNOWN_KINDS_LIMIT:
            _KNOWN_KINDS.add(value)
        return value

    @pydantic.field_validator("payload")
    @classmethod
    def _payload_is_a_snapshot(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        # A caller that keeps filling its dict after building the draft must not change what is hashed.
        return dict(value)

    @pydantic.field_validator("study_uid")
    @classmethod
    def _study_uid_is_dicom_uid(cls, value: str | None) -> str | None:
        # The value is patient-related: the message never repeats it.
        if value is not None and not DICOM_UID_PATTERN.match(value):
            raise ValueError("study_uid is not a DICOM UID (digits separated by dots, PS3.5 §9.1)")
        return value


class AppendedEntry(pydantic.BaseModel):
    """What an append returns: where the entry landed and the leaf hash that proves it."""

    model_config = pydantic.ConfigDict(frozen=True)

    index: int
    leaf_hash: str
    """Hex SHA-256(0x00 || entry)."""
    recorded_at: str


class LedgerEntry(pydantic.BaseModel):
    """One stored entry, read back from the database."""

    model_config = pydantic.ConfigDict(frozen=True)

    index: int
    kind: str
    actor: str
    patient_ref: str | None
    study_uid: str | None
    recorded_at: str
    payload_digest: str
    payload: dict[str, Any] | None
    """The payload, or None when it is stored out of line and was not loaded."""
    payload_inline: bool
    leaf_hash: str
    """Hex leaf hash as stored at append time."""


def payload_digest(payload_json: str) -> str:
    """``sha256:<hex>`` of the payload's canonical UTF-8 text."""
    return "sha256:" + hashlib.sha256(payload_json.encode("utf-8")).hexdigest()


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds (``2025-11-28T20:54:00.123456Z``); the string itself is hashed."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def now_timestamp() -> str:
    return format_timestamp(datetime.now(UTC))


def encode_entry(
    *,
    index: int,
    kind: str,
    actor: str,
    patient_ref: str | None,
    study_uid: str | None,
    recorded_at: str,
    payload_digest: str,
    payload_json: str | None,
) -> bytes:
    """The canonical JSON bytes of one entry (keys in sorted order), as hashed into the tree.

    ``payload_json`` is None for a payload stored out of line; the digest still binds it.
    """
    return entry_text(
        json_string(actor),
        index,
        json_string(kind),
        json_string(patient_ref),
        "null" if payload_json is None else payload_json,
        json_string(payload_digest),
        json_string(recorded_at),
        json_string(study_uid),
    ).encode("utf-8")


def entry_text(
    actor: str,
    index: int,
    kind: str,
    patient_ref: str,
    payload: str,
    payload_digest: str,
    recorded_at: str,
    study_uid: str,
) -> str:
    """The entry envelope from fields that are already JSON text (strings quoted, None as ``null``).

    The one definition of the hashed form: ``encode_entry`` and the batch encoder both call it, so the
    verifier and the appender cannot drift apart. Positional, because it runs once per appended entry.
    """
    return (
        f'{{"actor":{actor},"index":{index},"kind":{kind},"patient_ref":{patient_ref},'
        f'"payload":{payload},"payload_digest":{payload_digest},"recorded_at":{recorded_at},'
        f'"study_uid":{study_uid},"v":{ENTRY_FORMAT_VERSION}}}'
    )
