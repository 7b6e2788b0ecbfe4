"""ICD-10-CM tools on the real data package, through the registry and into the verifier."""

from __future__ import annotations

from integrations.tools.icd10cm import icd10cm_tools
from model.report import DraftReport, Statement
from model.tools import ToolRegistry
from model.verification import RejectionReason, verify_report


def registry() -> ToolRegistry:
    return ToolRegistry("p1", icd10cm_tools())


def test_lookup_with_or_without_dot() -> None:
    for code in ("E11.9", "e119"):
        outcome = registry().call("icd10cm_lookup", {"patient_id": "p1", "code": code})
        assert outcome.ok, outcome.error
        content = outcome.result.content  # type: ignore[union-attr]
        assert content["code"] == "E11.9" and content["billable"] is True
        assert content["description"] == "Type 2 diabetes mellitus without complications"
        assert "E11" in [a["code"] for a in content["ancestors"]]


def test_unknown_and_malformed_codes() -> None:
    assert (
        registry().call("icd10cm_lookup", {"patient_id": "p1", "code": "E99.99"}).error_kind == "tool_failed"
    )
    assert registry().call("icd10cm_lookup", {"patient_id": "p1", "code": "E11.9; drop"}).error_kind == (
        "invalid_arguments"
    )


def test_search_puts_billable_codes_first() -> None:
    outcome = registry().call(
        "icd10cm_search", {"patient_id": "p1", "query": "essential hypertension", "limit": 3}
    )
    items = outcome.result.content["items"]  # type: ignore[union-attr]
    assert items[0]["code"] == "I10" and all("hypertension" in i["description"].lower() for i in items)


def test_a_lookup_is_citable_evidence() -> None:
    reg = registry()
    reg.call("icd10cm_lookup", {"patient_id": "p1", "code": "I10"})
    good = Statement(text="Essential (primary) hypertension.", codes=["I10"], citations=["icd10cm:I10"])
    wrong = Statement(text="Type 2 diabetes mellitus.", citations=["icd10cm:I10"])
    verified = verify_report(
        DraftReport(findings=[good, wrong], untrained_model=True), reg.evidence(), [], reg.facts()
    )
    assert [v.reason for v in verified.verdicts] == [None, RejectionReason.UNRELATED_EVIDENCE]
