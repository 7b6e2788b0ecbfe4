"""Reading imaging orders (draft ServiceRequests) out of ``draftOrders``: modality, contrast, body region.

EHRs code imaging orders many ways (LOINC radiology playbook, CPT, local codes), so the reading is
from codings *and* text: a DICOM modality coding when present, else words such as "CT" / "MRI"; the
contrast agent from words such as "with contrast" / "gadolinium" (and "without" cancelling them);
body regions from bodySite and the order's text. An order none of this recognises as imaging is left
alone: the checks only ever speak about orders they understand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
IONISING = frozenset({"CT", "CR", "DX", "XR", "XA", "RF", "MG", "NM", "PT"})

Agent = Literal["iodinated", "gadolinium"]

_MODALITY_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("PT", re.compile(r"\bpet\b|positron")),
    ("NM", re.compile(r"\bnm\b|nuclear medicine|scintigra|\bspect\b")),
    ("MR", re.compile(r"\bmri?\b|\bmra\b|magnetic resonance")),
    ("CT", re.compile(r"\bct\b|\bcta\b|computed tomograph|\bcat scan")),
    ("MG", re.compile(r"mammogra")),
    ("XA", re.compile(r"angiogra(m|phy)(?! ct)|\bxa\b")),
    ("RF", re.compile(r"fluorosc")),
    ("US", re.compile(r"\bus\b|ultrasound|sonogra|echocardiogra|doppler")),
    ("XR", re.compile(r"x-?ray|radiograph|\bxr\b|\bcr\b|\bdx\b")),
)
_WITHOUT = re.compile(r"\b(without|w/o|wo)\b\s*(iv\s+|intravenous\s+)?(contrast|dye|gad)")
_WITH_AND_WITHOUT = re.compile(r"\b(with|w)\s*(and|&|/)\s*(without|wo|w/o)\b")
_CONTRAST = re.compile(r"contrast|\bcta\b|\bmra\b.*\bwith\b|gadolin|\bgad\b|iodinated|arthrogra|\bw\s*iv\b")
_GADOLINIUM_WORDS = re.compile(r"gadolin|\bgad\b|gado[a-z]+")
_IODINATED_WORDS = re.compile(r"iodinated|\bio[a-z]+ol\b|\bcta\b")

REGIONS: dict[str, re.Pattern[str]] = {
    "head": re.compile(r"\bhead\b|brain|skull|cranial|intracranial"),
    "neck": re.compile(r"\bneck\b|cervical soft|thyroid"),
    "chest": re.compile(r"chest|thora|lung|pulmonary"),
    "abdomen": re.compile(r"abdom|liver|hepat|pancrea|renal|kidney"),
    "pelvis": re.compile(r"pelvi"),
    "spine": re.compile(r"spine|spinal|lumbar|thoracic spine|cervical spine"),
    "breast": re.compile(r"breast|mammo"),
    "knee": re.compile(r"\bknee"),
    "shoulder": re.compile(r"shoulder"),
    "hip": re.compile(r"\bhip\b"),
    "heart": re.compile(r"heart|cardiac|coronary"),
}


def texts_of(concept: Any) -> list[str]:
    """Lower-cased ``text`` and displays of a CodeableConcept or a bare Coding (or a list of them)."""
    concepts = concept if isinstance(concept, list) else [concept]
    found: list[str] = []
    for item in concepts:
        if not isinstance(item, dict):
            continue
        for key in ("text", "display"):
            if isinstance(item.get(key), str):
                found.append(item[key].lower())
        for coding in item.get("coding", []):
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                found.append(coding["display"].lower())
    return found


def codes_of(concept: Any) -> set[str]:
    """``system|code`` of every coding of a CodeableConcept (or a list of them)."""
    concepts = concept if isinstance(concept, list) else [concept]
    return {
        f"{coding.get('system', '')}|{coding['code']}"
        for item in concepts
        if isinstance(item, dict)
        for coding in item.get("coding", [])
        if isinstance(coding, dict) and isinstance(coding.get("code"), str)
    }


def modality_of(codings: set[str], text: str) -> str | None:
    for coded in codings:
        system, _, code = coded.partition("|")
        if system == DICOM_DCM and code:
            return "XR" if code in ("CR", "DX") else code
    for modality, pattern in _MODALITY_WORDS:
        if pattern.search(text):
            return modality
    return None


def regions_of(texts: Iterable[str]) -> frozenset[str]:
    joined = " ".join(texts)
    return frozenset(region for region, pattern in REGIONS.items() if pattern.search(joined))


def contrast_agent(modality: str, text: str) -> Agent | None:
    if _WITHOUT.search(text) and not _WITH_AND_WITHOUT.search(text):
        return None
    if not (_CONTRAST.search(text) or _WITH_AND_WITHOUT.search(text)):
        return None
    if _GADOLINIUM_WORDS.search(text) or modality == "MR":
        return "gadolinium"
    if _IODINATED_WORDS.search(text) or modality in ("CT", "XA", "RF"):
        return "iodinated"
    return None


@dataclass(frozen=True)
class ImagingOrder:
    reference: str
    """``ServiceRequest/<id>``: what suggestions act on."""
    resource: dict[str, Any]
    label: str
    modality: str
    contrast: Agent | None
    regions: frozenset[str]
    codes: frozenset[str]


def read_imaging_order(resource: dict[str, Any]) -> ImagingOrder | None:
    """The imaging order a ServiceRequest describes, or None if it is not one we recognise."""
    if resource.get("resourceType") != "ServiceRequest" or not isinstance(resource.get("id"), str):
        return None
    code = resource.get("code", {})
    code_texts = texts_of(code)
    site_texts = texts_of(resource.get("bodySite", []))
    detail_texts = texts_of(resource.get("orderDetail", []))
    all_codes = codes_of(code) | codes_of(resource.get("category", []))
    text = " ".join(code_texts + detail_texts)
    modality = modality_of(all_codes, text)
    if modality is None:
        return None
    label = (code.get("text") if isinstance(code, dict) else None) or (
        code_texts[0] if code_texts else "imaging order"
    )
    return ImagingOrder(
        reference=f"ServiceRequest/{resource['id']}",
        resource=resource,
        label=str(label),
        modality=modality,
        contrast=contrast_agent(modality, text),
        regions=regions_of(code_texts + site_texts),
        codes=frozenset(codes_of(code)),
    )


def draft_imaging_orders(draft_orders: dict[str, Any], selections: list[str] | None) -> list[ImagingOrder]:
    """Imaging orders in the ``draftOrders`` Bundle; with ``selections`` (order-select), only those."""
    orders = []
    for entry in draft_orders.get("entry", []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        order = read_imaging_order(resource)
        if order is None:
            continue
        if selections is not None and order.reference not in selections:
            continue
        orders.append(order)
    return orders
