"""Evidence verification: no statement without evidence that says what it says.

Public API: ``verify_report``, ``facts_from_resource``, ``EvidenceFacts``, ``VerifiedReport``,
``StatementVerdict``, ``RejectionReason``.
"""

from model.verification.facts import EvidenceFacts, FactQuantity
from model.verification.fhir_facts import facts_from_resource
from model.verification.verdict import RejectionReason, StatementVerdict, VerifiedReport
from model.verification.verifier import facts_from_display, verify_report, verify_statement

__all__ = [
    "EvidenceFacts",
    "FactQuantity",
    "RejectionReason",
    "StatementVerdict",
    "VerifiedReport",
    "facts_from_display",
    "facts_from_resource",
    "verify_report",
    "verify_statement",
]
