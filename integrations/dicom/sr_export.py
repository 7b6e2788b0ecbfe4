"""Turn a draft report into a DICOM Comprehensive SR for the PACS (highdicom), flagged as a draft.

Why these flags: the SR is machine output no clinician has signed, so it is PRELIMINARY (not final),
PARTIAL (not complete) and UNVERIFIED; a PACS shows it as such. Every finding that cites an image
(`img:<sop uid>:<frame>`) carries an INFERRED FROM image reference, so the radiologist can jump from the
sentence to the frame the model looked at. Evidence citations that are not images (FHIR resources, tool
results) stay in the audit trace, not in the SR: the PACS cannot resolve them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from model.dicom_source import DicomFile, read_dicom
from model.report import DraftReport, Statement

TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
FINDING = Code("121071", "DCM", "Finding")
IMPRESSION = Code("121073", "DCM", "Impression")
COMMENT = Code("121106", "DCM", "Comment")
SOURCE_IMAGE = Code("121112", "DCM", "Source of Measurement")
SR_SERIES_NUMBER = 9901
DRAFT_NOTICE = "AI-generated draft from Veritrace: preliminary, unverified, not for diagnosis without review."
UNTRAINED_NOTICE = "Produced by an untrained test model: the content is meaningless."


# Type 2 attributes highdicom copies from the first evidence instance; senders often omit them.
_TYPE2_FROM_EVIDENCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2(ds: Dataset) -> Dataset:
    completed = copy.deepcopy(ds)
    for keyword in _TYPE2_FROM_EVIDENCE:
        if keyword not in completed:
            setattr(completed, keyword, "")
    _supported_character_set(completed)
    return completed


def _supported_character_set(ds: Dataset) -> None:
    """Leave the evidence in a Specific Character Set highdicom writes, else re-encode it as UTF-8.

    Japanese and Korean senders write `\\ISO 2022 IR 87`: an empty first value means the default
    repertoire with code extensions (PS3.3 C.12.1.1.2), defined term "ISO 2022 IR 6". highdicom rejects
    the empty value and does not know some terms at all (Korean "ISO 2022 IR 149"); without this, every SR
    of such a study would fail to build. Values are decoded to text first, so nothing is lost.
    """
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    values = [v or "ISO 2022 IR 6" for v in values]
    known = {member.value for member in hd.enum.SpecificCharacterSetValues}
    if all(v in known for v in values):
        ds.SpecificCharacterSet = values if len(values) > 1 else values[0]
        return
    ds.decode()
    ds.SpecificCharacterSet = "ISO_IR 192"


def load_evidence(paths: Sequence[DicomFile]) -> list[Dataset]:
    """Source instances without pixel data: highdicom copies patient / study attributes from them."""
    return [read_dicom(path, stop_before_pixels=True) for path in paths]


def _image_refs(statement: Statement, by_sop: dict[str, Dataset]) -> list[hd.sr.ImageContentItem]:
    items = []
    for citation in statement.citations:
        if not citation.startswith("img:"):
            continue
        sop_uid, _, frame = citation[4:].rpartition(":")
        source = by_sop.get(sop_uid)
        if source is None:
            raise ValueError(f"statement cites image {citation!r}, which is not among the SR's evidence")
        frames = int(frame) + 1 if frame.isdigit() and int(source.get("NumberOfFrames", 1) or 1) > 1 else None
        items.append(
            hd.sr.ImageContentItem(
                name=SOURCE_IMAGE,
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
                referenced_frame_numbers=frames,
                relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
            )
        )
    return items


def _text(name: Code, statement: Statement, by_sop: dict[str, Dataset]) -> hd.sr.TextContentItem:
    item = hd.sr.TextContentItem(
        name=name, value=statement.text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    references = _image_refs(statement, by_sop)
    if references:
        item.ContentSequence = hd.sr.ContentSequence(references)
    return item


def build_draft_sr(
    report: DraftReport, evidence: Sequence[Dataset], *, sop_instance_uid: str | None = None
) -> hd.sr.ComprehensiveSR:
    """Requires at least one evidence dataset, all from one study. Raises ValueError on a bad citation."""
    if not evidence:
        raise ValueError("a draft SR needs the source instances as evidence; none were given")
    evidence = [_with_type2(ds) for ds in evidence]
    by_sop = {str(ds.SOPInstanceUID): ds for ds in evidence}
    children: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(
            name=COMMENT, value=DRAFT_NOTICE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    ]
    if report.untrained_model:
        children.append(
            hd.sr.TextContentItem(
                name=COMMENT, value=UNTRAINED_NOTICE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    children += [_text(FINDING, statement, by_sop) for statement in report.findings]
    children += [_text(IMPRESSION, statement, by_sop) for statement in report.impression]
    root = hd.sr.ContainerContentItem(name=TITLE)
    root.ContentSequence = hd.sr.ContentSequence(children)
    return hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=root,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer="Veritrace",
        is_complete=False,
        is_final=False,
        is_verified=False,
    )
