"""Check every statement of a draft against the evidence it cites; remove what the evidence does not support.

Checks run in a fixed order and the first failure is the verdict's reason: a citation at all, every
citation known to this trace, every cited item about the statement's subject, then each number, unit, date,
side and negation the statement states, each of which must be found in the cited evidence. A statement
that states something its citations do not say is rejected, so the checks fail closed: a claim the reader
cannot match is treated as unsupported, never as fine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from model.report import DraftReport, EvidenceItem, ImageRef, Laterality, Statement
from model.verification.facts import EvidenceFacts, FactQuantity
from model.verification.text_claims import (
    clause_negated,
    clauses,
    content_words,
    read_claims,
    read_sides,
)
from model.verification.units import canonical_unit
from model.verification.verdict import RejectionReason, StatementVerdict, VerifiedReport

NARRATIVE_OVERLAP = 2  # shared distinctive words that make a narrative (report text) about the statement


class Rejection(Exception):
    """Raised inside the checks to stop at the first failure; carries the reason and what failed."""

    def __init__(self, reason: RejectionReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def facts_from_display(item: EvidenceItem) -> EvidenceFacts:
    """Fallback facts for evidence that came without structured facts: whatever its display text states.

    Weaker than ``facts_from_resource`` (no status, units as written), but it keeps numbers and dates that
    are not in the display from passing.
    """
    claims = read_claims(item.display)
    return EvidenceFacts(
        resource_type=item.resource_type,
        quantities=[FactQuantity(value=q.value, unit=q.unit) for q in claims.quantities],
        numbers=claims.numbers,
        dates=claims.dates,
        names=[item.display],
        laterality=sorted(claims.sides, key=lambda s: s.value),
    )


def verify_report(
    report: DraftReport,
    evidence: Sequence[EvidenceItem],
    image_refs: Sequence[ImageRef],
    facts: Mapping[str, EvidenceFacts] | None = None,
) -> VerifiedReport:
    """Verdicts for every statement of ``report``, and the report without the rejected ones.

    ``evidence`` and ``image_refs`` are what this trace showed the model: the only citable ids. ``facts``
    maps citation ids (evidence ids, image citation ids) to their structured facts; evidence without an
    entry falls back to ``facts_from_display``, an image without one supports image findings but no
    number, date or side.
    """
    known: dict[str, EvidenceFacts | None] = {ref.citation_id: None for ref in image_refs}
    for item in evidence:
        known[item.id] = facts_from_display(item)
    for citation_id, item_facts in (facts or {}).items():
        if citation_id in known:
            known[citation_id] = item_facts
    image_ids = {ref.citation_id for ref in image_refs}
    verdicts: list[StatementVerdict] = []
    kept: dict[str, list[Statement]] = {"findings": [], "impression": []}
    for section, statements in (("findings", report.findings), ("impression", report.impression)):
        for index, statement in enumerate(statements):
            verdict = verify_statement(statement, known, image_ids, section=section, index=index)
            verdicts.append(verdict)
            if verdict.supported:
                kept[section].append(statement)
    verified = DraftReport(
        findings=kept["findings"], impression=kept["impression"], untrained_model=report.untrained_model
    )
    return VerifiedReport(report=verified, verdicts=verdicts)


def verify_statement(
    statement: Statement,
    known: Mapping[str, EvidenceFacts | None],
    image_ids: set[str],
    *,
    section: str = "findings",
    index: int = 0,
) -> StatementVerdict:
    """One statement's verdict; ``known`` maps each citable id to its facts (None: an image without any)."""
    try:
        _check(statement, known, image_ids)
    except Rejection as rejection:
        return StatementVerdict.model_validate(
            {
                "section": section,
                "index": index,
                "statement": statement,
                "supported": False,
                "reason": rejection.reason,
                "detail": rejection.detail,
            }
        )
    return StatementVerdict.model_validate(
        {"section": section, "index": index, "statement": statement, "supported": True}
    )


def _check(statement: Statement, known: Mapping[str, EvidenceFacts | None], image_ids: set[str]) -> None:
    if not statement.citations:
        raise Rejection(RejectionReason.MISSING_CITATION, "the statement cites no evidence")
    unknown = [c for c in statement.citations if c not in known]
    if unknown:
        raise Rejection(RejectionReason.UNKNOWN_CITATION, f"not in this trace: {', '.join(unknown)}")
    cited = {c: known[c] for c in dict.fromkeys(statement.citations)}
    words = content_words(statement.text)
    for citation_id, item_facts in cited.items():
        if item_facts is not None and not _related(statement, words, item_facts):
            raise Rejection(RejectionReason.UNRELATED_EVIDENCE, f"{citation_id} is not about this statement")
    facts = [f for f in cited.values() if f is not None]
    _check_numbers(statement.text, facts)
    _check_dates(statement.text, facts)
    _check_sides(statement, facts, cites_image=any(c in image_ids for c in cited))
    for item_facts in facts:
        _check_negation(statement.text, item_facts)


def _code_keys(code: str) -> set[str]:
    """``E11.9``, ``icd-10-cm:E11.9`` and ``http://...|E11.9`` all key as ``e11.9``."""
    tail = code.rsplit("|", 1)[-1].rsplit(":", 1)[-1].strip().lower()
    return {tail} if tail else set()


def _name_words(item_facts: EvidenceFacts) -> set[str]:
    return set().union(*(content_words(name) for name in item_facts.names)) if item_facts.names else set()


def _related(statement: Statement, words: set[str], item_facts: EvidenceFacts) -> bool:
    """Shared code, a word of the evidence's concept names, or enough words of its narrative."""
    stated_codes = set().union(*(_code_keys(c) for c in statement.codes)) if statement.codes else set()
    evidence_codes = set().union(*(_code_keys(c) for c in item_facts.codes)) if item_facts.codes else set()
    if stated_codes & evidence_codes:
        return True
    if words & _name_words(item_facts):
        return True
    narrative_words = (
        set().union(*(content_words(c) for c in item_facts.narrative)) if item_facts.narrative else set()
    )
    return len(words & narrative_words) >= NARRATIVE_OVERLAP


def _decimals(value: Decimal) -> int:
    """Decimal places as written: ``91.0`` has one (it claims precision to 0.1), ``91`` none."""
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def same_number(stated: Decimal, actual: Decimal) -> bool:
    """Equal, or ``actual`` rounded to one decimal place fewer than it has (1.12 read as 1.1, not as 1).

    A stated ``91.0`` claims a tenth's precision, so it does not match 91.2; the evidence's trailing
    zeros claim nothing (a FHIR decimal 68.0 is stored as it was sent).
    """
    if stated == actual:
        return True
    places = _decimals(actual.normalize())
    if places == 0 or _decimals(stated) != places - 1:
        return False
    step = Decimal(1).scaleb(-(places - 1))
    return actual.quantize(step, rounding="ROUND_HALF_UP") == stated or actual.quantize(step) == stated


def _check_numbers(text: str, facts: Sequence[EvidenceFacts]) -> None:
    quantities = [(q.value, canonical_unit(q.unit)) for f in facts for q in f.quantities]
    bare = [n for f in facts for n in f.numbers]
    bare += [Decimal(c) for f in facts for c in f.codes if c.isdigit()]
    claims = read_claims(text)
    for stated in claims.quantities:
        unit = canonical_unit(stated.unit)
        if any(same_number(stated.value, v) and u == unit for v, u in quantities):
            continue
        if any(same_number(stated.value, v) for v, _ in quantities) or any(
            same_number(stated.value, n) for n in bare
        ):
            raise Rejection(
                RejectionReason.UNIT_MISMATCH,
                f"{stated.value} {stated.unit}: the cited evidence has another unit",
            )
        raise Rejection(
            RejectionReason.NUMBER_MISMATCH, f"{stated.value} {stated.unit}: not in the cited evidence"
        )
    for number in claims.numbers:
        if not any(same_number(number, v) for v, _ in quantities) and not any(
            same_number(number, n) for n in bare
        ):
            raise Rejection(RejectionReason.NUMBER_MISMATCH, f"{number}: not in the cited evidence")


def _check_dates(text: str, facts: Sequence[EvidenceFacts]) -> None:
    known = {d for f in facts for d in f.dates}
    for stated in read_claims(text).dates:
        if stated not in known:
            raise Rejection(RejectionReason.DATE_MISMATCH, f"{stated.isoformat()}: not in the cited evidence")


def _side_supported(side: Laterality, evidence: set[Laterality]) -> bool:
    if side in evidence:
        return True
    if side is Laterality.BILATERAL:
        return {Laterality.LEFT, Laterality.RIGHT} <= evidence
    return Laterality.BILATERAL in evidence  # one side of a bilateral finding


def _check_sides(statement: Statement, facts: Sequence[EvidenceFacts], *, cites_image: bool) -> None:
    written = read_sides(statement.text)
    declared = statement.laterality
    if (
        declared is not Laterality.NONE
        and written
        and not any(_side_supported(s, {declared}) for s in written)
    ):
        sides = ", ".join(sorted(s.value for s in written))
        raise Rejection(
            RejectionReason.LATERALITY_MISMATCH, f"laterality {declared.value} contradicts the text ({sides})"
        )
    stated = written | ({declared} if declared is not Laterality.NONE else set())
    if not stated:
        return
    evidence = {side for f in facts for side in f.laterality}
    if not evidence:
        if cites_image:
            return  # the cited image shows both sides; which one the finding is on is the model's reading
        raise Rejection(RejectionReason.LATERALITY_MISMATCH, "no cited evidence states a side")
    for side in stated:
        if not _side_supported(side, evidence):
            raise Rejection(
                RejectionReason.LATERALITY_MISMATCH,
                f"{side.value}: the cited evidence says {', '.join(sorted(s.value for s in evidence))}",
            )


def _check_negation(text: str, item_facts: EvidenceFacts) -> None:
    name_words = _name_words(item_facts)
    if item_facts.asserted is not None:
        naming = [c for c in clauses(text) if content_words(c) & name_words]
        negated = any(clause_negated(c, name_words) for c in naming) if naming else clause_negated(text)
        if negated == item_facts.asserted:
            said = "absent" if negated else "present"
            found = "present" if item_facts.asserted else "absent, resolved or stopped"
            raise Rejection(
                RejectionReason.NEGATION_MISMATCH, f"the statement says {said}, the evidence says {found}"
            )
    for clause in clauses(text):
        words = content_words(clause) - name_words
        if not words:
            continue
        best, overlap = None, 0
        for narrative in item_facts.narrative:
            shared = len(words & content_words(narrative))
            if shared > overlap:
                best, overlap = narrative, shared
        if best is not None and clause_negated(clause) != clause_negated(best):
            raise Rejection(
                RejectionReason.NEGATION_MISMATCH,
                f'"{clause}" and the evidence\'s "{best}" disagree on negation',
            )
