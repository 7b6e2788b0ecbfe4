"""Turning a batch of drafts into table rows and leaf hashes: the per-entry cost of every append.

Split in two on purpose. ``prepare_batch`` does what does not depend on the index (canonical JSON of
each payload and its digest), before the sequencer lock is taken, so bad input is refused before
anything is written and the lock is held only for ``encode_batch``: building each entry's envelope at
its index and hashing it. Both are plain loops over tuples; per-entry objects cost more than the SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from audit.canonical import canonical_json, json_string
from audit.entry import AppendedEntry, EntryDraft, entry_text


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """Validated drafts with their payloads in canonical form, ready for indexes."""

    drafts: Sequence[EntryDraft]
    payload_texts: list[str]
    payload_sizes: list[int]
    """UTF-8 length of each canonical payload, against the inline limit."""
    payload_digests: list[str]


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """Rows for ``audit_entries`` (in ``ENTRY_COLUMNS`` order), their leaf hashes, out-of-line bodies."""

    entry_rows: list[tuple[Any, ...]]
    leaves: list[bytes]
    blobs: dict[str, str]
    """digest -> canonical text of every payload above the inline limit."""


def prepare_batch(drafts: Sequence[EntryDraft]) -> PreparedBatch:
    """Canonicalise every payload; raises ``NotCanonicalizable`` naming the first bad value."""
    sha256 = hashlib.sha256
    texts = [canonical_json(draft.payload) for draft in drafts]
    encoded = [text.encode("utf-8") for text in texts]
    return PreparedBatch(
        drafts=drafts,
        payload_texts=texts,
        payload_sizes=[len(raw) for raw in encoded],
        payload_digests=["sha256:" + sha256(raw).hexdigest() for raw in encoded],
    )


def encode_batch(batch: PreparedBatch, first_index: int, recorded_at: str, inline_limit: int) -> EncodedBatch:
    """Entry rows and leaf hashes for ``batch`` placed at ``first_index`` onwards, recorded at one time."""
    sha256 = hashlib.sha256
    quoted: dict[str | None, str] = {None: "null"}  # kinds, actors, patients repeat within a batch
    recorded_json = json_string(recorded_at)
    rows: list[tuple[Any, ...]] = []
    leaves: list[bytes] = []
    blobs: dict[str, str] = {}
    for offset, (draft, text, size, digest) in enumerate(
        zip(batch.drafts, batch.payload_texts, batch.payload_sizes, batch.payload_digests, strict=True)
    ):
        kind, actor, patient_ref, study_uid = draft.kind, draft.actor, draft.patient_ref, draft.study_uid
        kind_json = quoted.get(kind) or quoted.setdefault(kind, json_string(kind))
        actor_json = quoted.get(actor) or quoted.setdefault(actor, json_string(actor))
        patient_json = quoted.get(patient_ref) or quoted.setdefault(patient_ref, json_string(patient_ref))
        study_json = quoted.get(study_uid) or quoted.setdefault(study_uid, json_string(study_uid))
        index = first_index + offset
        inline: str | None = text
        if size > inline_limit:
            blobs[digest] = text
            inline = None
        data = entry_text(
            actor_json,
            index,
            kind_json,
            patient_json,
            "null" if inline is None else inline,
            f'"{digest}"',
            recorded_json,
            study_json,
        )
        leaf = sha256(b"\x00" + data.encode("utf-8")).digest()
        leaves.append(leaf)
        rows.append((index, recorded_at, kind, actor, patient_ref, study_uid, digest, inline, leaf))
    return EncodedBatch(entry_rows=rows, leaves=leaves, blobs=blobs)


class AppendedBatch(Sequence[AppendedEntry]):
    """What ``append_many`` returns: a sequence of ``AppendedEntry``, each built when it is read.

    Building a pydantic object per entry cost as much as hashing it, and most batch callers only check
    that the append succeeded.
    """

    __slots__ = ("_first", "_leaves", "_recorded_at")

    def __init__(self, first_index: int, recorded_at: str, leaves: list[bytes]) -> None:
        self._first = first_index
        self._recorded_at = recorded_at
        self._leaves = leaves

    def __len__(self) -> int:
        return len(self._leaves)

    @overload
    def __getitem__(self, position: int) -> AppendedEntry: ...

    @overload
    def __getitem__(self, position: slice) -> list[AppendedEntry]: ...

    def __getitem__(self, position: int | slice) -> AppendedEntry | list[AppendedEntry]:
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self._leaves)))]
        leaf = self._leaves[position]  # raises IndexError as a list does
        if position < 0:
            position += len(self._leaves)
        return AppendedEntry.model_construct(
            index=self._first + position, leaf_hash=leaf.hex(), recorded_at=self._recorded_at
        )

    def __iter__(self) -> Iterator[AppendedEntry]:
        for position in range(len(self._leaves)):
            yield self[position]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AppendedBatch | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AppendedBatch(first_index={self._first}, count={len(self._leaves)})"
