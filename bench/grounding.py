"""Hallucination catch rate of the evidence verifier (issue 7): caught / injected per error kind.

From the synthetic patients (``integrations.fhir.synthetic.generate_patients``, many seeds and anchor
days so values and dates vary) it generates correct statements: each derived from the patient's actual
FHIR resources and citing exactly the resources it states. Then, for every statement where a kind
applies, it injects one error of that kind:

- ``number_mismatch``: one stated number changed (last digit nudged or scaled), never to a value any
  cited resource holds at that precision;
- ``unit_mismatch``: one stated unit replaced by another clinical unit that is not a spelling of it;
- ``date_mismatch``: one stated date shifted by 1 to 400 days, never onto a cited date;
- ``laterality_mismatch``: left and right swapped in the text and the laterality field;
- ``negation_mismatch``: the statement's polarity flipped (present <-> absent / resolved / stopped);
- ``unknown_citation``: one citation replaced by an id not in the trace (another patient's resource or
  a made-up id of this patient);
- ``unrelated_evidence``: one citation replaced by a resource of this patient about another concept;
- ``missing_citation``: every citation removed.

Every statement, correct or injected, goes through ``model.verification.verify_report`` with the
patient's whole record as the trace. Caught = rejected (whatever the reason); "as kind" = rejected with
the injected kind as the reason. False rejections are correct statements rejected.

Run: ``.venv/bin/python bench/grounding.py [--seeds 40] [--write]``; ``--write`` replaces the
"Grounding" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from integrations.fhir.synthetic import DEFAULT_ANCHOR, DEFAULT_SEED, SyntheticPatient, generate_patients
from integrations.tools.evidence import evidence_of
from model.report import DraftReport, EvidenceItem, Laterality, Statement
from model.verification import EvidenceFacts, RejectionReason, StatementVerdict, verify_report
from model.verification.units import canonical_unit

KINDS = tuple(RejectionReason)
WRONG_UNITS = ("mg/dL", "mmol/L", "g/dL", "g/L", "umol/L", "mEq/L", "%", "mmHg", "kg", "mm", "cm", "mL/min")
RESULTS = Path(__file__).with_name("RESULTS.md")


# ---------------- statements with slots ----------------


@dataclass(frozen=True)
class Quantity:
    value: str  # as written in the statement (the resource's value, formatted)
    unit: str | None
    ucum: str | None = None  # the UCUM code, written instead of ``unit`` in the UCUM style


@dataclass(frozen=True)
class Style:
    """How a statement is worded, varied per statement so the verifier meets more than one spelling."""

    dates_in_words: bool = False  # "2 October 2026" instead of "2026-10-02"
    ucum_units: bool = False  # "mL/min/{1.73_m2}" instead of "mL/min/1.73m2"


@dataclass(frozen=True)
class GroundedStatement:
    """A correct statement as a template plus its slots, so one slot at a time can be made wrong.

    ``template`` uses ``{q0}`` for quantities (value and unit), ``{d0}`` for dates and ``{polarity}``
    for the affirmative / negative wording given by ``affirm`` / ``negate``.
    """

    template: str
    quantities: tuple[Quantity, ...] = ()
    dates: tuple[str, ...] = ()
    citations: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    laterality: Laterality = Laterality.NONE
    negated: bool | None = None  # None: polarity cannot be flipped meaningfully
    affirm: str = ""
    negate: str = ""

    def render(self, style: Style = Style()) -> Statement:
        values = {f"q{i}": _written(q, style) for i, q in enumerate(self.quantities)}
        values |= {f"d{i}": _written_date(d, style) for i, d in enumerate(self.dates)}
        values["polarity"] = self.negate if self.negated else self.affirm
        return Statement(
            text=self.template.format(**values),
            laterality=self.laterality,
            codes=list(self.codes),
            citations=list(self.citations),
        )


def _written(q: Quantity, style: Style) -> str:
    unit = q.ucum if style.ucum_units and q.ucum else q.unit
    return q.value + (f" {unit}" if unit else "")


def _written_date(day: str, style: Style) -> str:
    if not style.dates_in_words:
        return day
    d = date.fromisoformat(day)
    return f"{d.day} {d.strftime('%B')} {d.year}"


def _day(stamp: str) -> str:
    return stamp[:10]


def _quantity(raw: dict[str, Any]) -> Quantity:
    unit = raw.get("unit") or raw.get("code")
    if unit in (None, "", "{INR}"):
        return Quantity(_number_text(raw["value"]), None)
    return Quantity(_number_text(raw["value"]), str(unit), raw.get("code"))


def _number_text(value: Any) -> str:
    return format(Decimal(str(value)).normalize(), "f") if isinstance(value, float) else str(value)


def correct_statements(patient: SyntheticPatient, ids: dict[str, str]) -> Iterator[GroundedStatement]:
    """Statements a careful reader would write from this record, each citing what it states."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in patient.resources:
        by_type.setdefault(r["resourceType"], []).append(r)

    def cite(*resources: dict[str, Any]) -> tuple[str, ...]:
        return tuple(ids[r["id"]] for r in resources)

    person = by_type["Patient"][0]
    yield GroundedStatement(
        f"{person['gender'].capitalize()} patient, born {{d0}}.",
        dates=(person["birthDate"],),
        citations=cite(person),
    )
    for condition in by_type.get("Condition", []):
        icd = next(c["code"] for c in condition["code"]["coding"] if "icd-10" in c["system"])
        name = condition["code"]["text"]
        resolved = condition["clinicalStatus"]["coding"][0]["code"] == "resolved"
        yield GroundedStatement(
            f"{{polarity}} {name} ({icd}), onset {{d0}}.",
            dates=(_day(condition["onsetDateTime"]),),
            citations=cite(condition),
            codes=(icd,),
            negated=resolved,
            affirm="Active problem:",
            negate="Resolved problem: no current",
        )
    observations = by_type.get("Observation", [])
    labs: dict[str, list[dict[str, Any]]] = {}
    for obs in observations:
        if "valueQuantity" in obs:
            labs.setdefault(obs["code"]["text"], []).append(obs)
    for label, series in labs.items():
        series = sorted(series, key=lambda o: o["effectiveDateTime"])
        last = series[-1]
        yield GroundedStatement(
            f"{label} {{q0}} on {{d0}}.",
            quantities=(_quantity(last["valueQuantity"]),),
            dates=(_day(last["effectiveDateTime"]),),
            citations=cite(last),
        )
        if len(series) > 1 and not label.startswith("eGFR ("):
            first = series[0]
            yield GroundedStatement(
                f"{label} went from {{q0}} on {{d0}} to {{q1}} on {{d1}}.",
                quantities=(_quantity(first["valueQuantity"]), _quantity(last["valueQuantity"])),
                dates=(_day(first["effectiveDateTime"]), _day(last["effectiveDateTime"])),
                citations=cite(first, last),
            )
    for obs in observations:
        if obs.get("code", {}).get("text") == "Blood pressure":
            systolic, diastolic = (_quantity(c["valueQuantity"]) for c in obs["component"])
            yield GroundedStatement(
                f"Blood pressure {systolic.value}/{{q0}} on {{d0}}.",
                quantities=(diastolic,),
                dates=(_day(obs["effectiveDateTime"]),),
                citations=cite(obs),
            )
        elif obs.get("code", {}).get("text") == "Pregnancy status":
            pregnant = obs["valueCodeableConcept"]["text"] == "Pregnant"
            yield GroundedStatement(
                "Pregnancy status on {d0}: {polarity}.",
                dates=(_day(obs["effectiveDateTime"]),),
                citations=cite(obs),
                negated=not pregnant,
                affirm="pregnant",
                negate="not pregnant",
            )
    for med in by_type.get("MedicationRequest", []):
        name = med["medicationCodeableConcept"]["text"]
        dose = re.match(r"(\d+(?:\.\d+)?) (\S+) (.*)", med["dosageInstruction"][0]["text"])
        assert dose is not None, "synthetic dosage texts start with amount and unit"
        unit = dose.group(2) if dose.group(2) in ("mg", "g", "mcg") else None
        rest = dose.group(3) if unit else f"{dose.group(2)} {dose.group(3)}"
        yield GroundedStatement(
            f"{name}, {{q0}} {rest}, prescribed {{d0}}{{polarity}}.",
            quantities=(Quantity(dose.group(1), unit),),
            dates=(_day(med["authoredOn"]),),
            citations=cite(med),
            negated=False,
            affirm=", taken currently",
            negate=", discontinued",
        )
    for allergy in by_type.get("AllergyIntolerance", []):
        reaction = allergy["reaction"][0]["manifestation"][0]["coding"][0]["display"]
        yield GroundedStatement(
            f"{{polarity}} {allergy['code']['text']} (reaction {reaction.lower()}), recorded {{d0}}.",
            dates=(_day(allergy["recordedDate"]),),
            citations=cite(allergy),
            negated=False,
            affirm="Allergy to",
            negate="No allergy to",
        )
    for study in by_type.get("ImagingStudy", []):
        yield GroundedStatement(
            f"Prior imaging: {study['description']} study on {{d0}}.",
            dates=(_day(study["started"]),),
            citations=cite(study),
        )
    for report in by_type.get("DiagnosticReport", []):
        title = report["code"]["text"]
        for sentence in re.split(r"(?<=\.)\s+", report["conclusion"].strip()):
            yield _report_sentence(report, title, sentence.rstrip("."), cite(report))


def _report_sentence(
    report: dict[str, Any], title: str, sentence: str, citations: tuple[str, ...]
) -> GroundedStatement:
    """One conclusion sentence restated with its date; its quantities, side and polarity become slots."""
    quantities: list[Quantity] = []

    def slot(match: re.Match[str]) -> str:
        quantities.append(Quantity(match.group(1), match.group(2)))
        return f"{{q{len(quantities) - 1}}}"

    body = re.sub(r"(\d+(?:\.\d+)?) (mm|cm)\b", slot, sentence)
    side = Laterality.NONE
    for word in ("left", "right"):
        if re.search(rf"\b{word}\b", body):
            side = Laterality(word)
    negated: bool | None = None
    affirm = negate = ""
    if body.startswith("No "):
        negated, affirm, negate, body = True, "", "no ", body[3:]
    elif not body.startswith("Recommend"):
        negated, affirm, negate, body = False, "", "no ", body[0].lower() + body[1:]
    return GroundedStatement(
        f"Prior {title} on {{d0}}: {{polarity}}{body}.",
        quantities=tuple(quantities),
        dates=(_day(report["effectiveDateTime"]),),
        citations=citations,
        laterality=side,
        negated=negated,
        affirm=affirm,
        negate=negate,
    )


# ---------------- injection ----------------


@dataclass
class Trace:
    """One patient's trace: evidence, facts, and what the injectors need to know about it."""

    evidence: list[EvidenceItem]
    facts: dict[str, EvidenceFacts]
    concept: dict[str, str]  # citation id -> concept key (type and code text), for unrelated picks
    foreign_ids: list[str]  # citation ids of other patients' resources
    own_prefixes: list[str] = field(default_factory=list)


def _cited_numbers(statement: GroundedStatement, trace: Trace) -> list[Decimal]:
    facts = [trace.facts[c] for c in statement.citations]
    return [q.value for f in facts for q in f.quantities] + [n for f in facts for n in f.numbers]


def _wrong_number(value: str, taken: Sequence[Decimal], rng: random.Random) -> str:
    places = len(value.split(".")[1]) if "." in value else 0
    step = Decimal(1).scaleb(-places)
    original = Decimal(value)
    for _ in range(100):
        if rng.random() < 0.5:
            candidate = original + step * rng.choice([-3, -2, -1, 1, 2, 3])
        else:
            factor = Decimal(str(rng.choice([0.5, 0.6, 0.7, 0.8, 1.2, 1.3, 1.5, 1.8, 2.0])))
            candidate = (original * factor).quantize(step)
        if candidate > 0 and all(round(t, places) != candidate for t in taken):
            return format(candidate, "f")
    raise RuntimeError(f"no wrong number found for {value}")


def inject(
    kind: RejectionReason, s: GroundedStatement, trace: Trace, rng: random.Random, style: Style = Style()
) -> Statement | None:
    """``s`` with one error of ``kind``, or None where the kind does not apply to it."""
    if kind is RejectionReason.MISSING_CITATION:
        return s.render(style).model_copy(update={"citations": []})
    if kind is RejectionReason.UNKNOWN_CITATION:
        bad = rng.choice(trace.foreign_ids) if rng.random() < 0.5 else f"{s.citations[0]}9/_history/1"
        return _swap_citation(s, bad, rng, style)
    if kind is RejectionReason.UNRELATED_EVIDENCE:
        concepts = {trace.concept[c] for c in s.citations}
        others = [c for c, k in trace.concept.items() if k not in concepts]
        return _swap_citation(s, rng.choice(others), rng, style)
    if kind is RejectionReason.NUMBER_MISMATCH:
        if not s.quantities:
            return None
        i = rng.randrange(len(s.quantities))
        wrong = _wrong_number(s.quantities[i].value, _cited_numbers(s, trace), rng)
        return _with_quantity(s, i, replace(s.quantities[i], value=wrong), style)
    if kind is RejectionReason.UNIT_MISMATCH:
        with_units = [i for i, q in enumerate(s.quantities) if q.unit]
        if not with_units:
            return None
        i = rng.choice(with_units)
        original = canonical_unit(s.quantities[i].unit)
        unit = rng.choice([u for u in WRONG_UNITS if canonical_unit(u) != original])
        return _with_quantity(s, i, replace(s.quantities[i], unit=unit, ucum=None), style)
    if kind is RejectionReason.DATE_MISMATCH:
        if not s.dates:
            return None
        i = rng.randrange(len(s.dates))
        cited = {d for c in s.citations for d in trace.facts[c].dates}
        day = date.fromisoformat(s.dates[i])
        while True:
            shifted = day + timedelta(days=rng.choice([-1, 1]) * rng.randint(1, 400))
            if shifted not in cited:
                break
        dates = list(s.dates)
        dates[i] = shifted.isoformat()
        return replace(s, dates=tuple(dates)).render(style)
    if kind is RejectionReason.LATERALITY_MISMATCH:
        if s.laterality not in (Laterality.LEFT, Laterality.RIGHT):
            return None
        flipped = Laterality.RIGHT if s.laterality is Laterality.LEFT else Laterality.LEFT
        template = s.template.replace(s.laterality.value, flipped.value)
        return replace(s, template=template, laterality=flipped).render(style)
    if kind is RejectionReason.NEGATION_MISMATCH:
        if s.negated is None:
            return None
        return replace(s, negated=not s.negated).render(style)
    raise ValueError(f"unknown kind {kind}")


def _swap_citation(s: GroundedStatement, bad: str, rng: random.Random, style: Style) -> Statement:
    citations = list(s.citations)
    citations[rng.randrange(len(citations))] = bad
    return s.render(style).model_copy(update={"citations": citations})


def _with_quantity(s: GroundedStatement, i: int, quantity: Quantity, style: Style) -> Statement:
    quantities = list(s.quantities)
    quantities[i] = quantity
    return replace(s, quantities=tuple(quantities)).render(style)


# ---------------- the run ----------------


@dataclass
class Tally:
    correct: int = 0
    false_rejections: int = 0
    false_reasons: Counter[str] = field(default_factory=Counter)
    injected: Counter[RejectionReason] = field(default_factory=Counter)
    caught: Counter[RejectionReason] = field(default_factory=Counter)
    as_kind: Counter[RejectionReason] = field(default_factory=Counter)


def _trace_of(patient: SyntheticPatient, others: Sequence[SyntheticPatient]) -> tuple[Trace, dict[str, str]]:
    evidence, facts, concept, ids = [], {}, {}, {}
    for r in patient.resources:
        item, item_facts = evidence_of(r)
        evidence.append(item)
        facts[item.id] = item_facts
        ids[r["id"]] = item.id
        # an ImagingStudy and the report on it share one concept: the study's title
        code = (r.get("code") or r.get("medicationCodeableConcept") or {}).get("text")
        concept[item.id] = str(code or r.get("description") or r["id"]).lower()
    foreign = [evidence_of(r)[0].id for o in others for r in o.resources]
    return Trace(evidence, facts, concept, foreign), ids


def _verdicts(statements: Sequence[Statement], trace: Trace) -> list[StatementVerdict]:
    report = DraftReport(findings=list(statements), untrained_model=False)
    return verify_report(report, trace.evidence, [], trace.facts).verdicts


def run(
    seeds: int, *, first_seed: int = DEFAULT_SEED, on_false: Callable[[StatementVerdict], None] | None = None
) -> Tally:
    """Generate, inject and verify over ``seeds`` seeds of the three synthetic patients."""
    tally = Tally()
    for n in range(seeds):
        seed = first_seed + n
        rng = random.Random(seed)
        patients = generate_patients(3, seed=seed, anchor=DEFAULT_ANCHOR + timedelta(days=n * 7))
        for patient in patients:
            trace, ids = _trace_of(patient, [p for p in patients if p is not patient])
            grounded = list(correct_statements(patient, ids))
            styles = [Style(rng.random() < 0.5, rng.random() < 0.5) for _ in grounded]
            for verdict in _verdicts([g.render(st) for g, st in zip(grounded, styles, strict=True)], trace):
                tally.correct += 1
                if not verdict.supported:
                    tally.false_rejections += 1
                    tally.false_reasons[str(verdict.reason)] += 1
                    if on_false is not None:
                        on_false(verdict)
            injected: list[tuple[RejectionReason, Statement]] = []
            for g, style in zip(grounded, styles, strict=True):
                for kind in KINDS:
                    wrong = inject(kind, g, trace, rng, style)
                    if wrong is not None:
                        injected.append((kind, wrong))
            for (kind, _), verdict in zip(injected, _verdicts([w for _, w in injected], trace), strict=True):
                tally.injected[kind] += 1
                if not verdict.supported:
                    tally.caught[kind] += 1
                    if verdict.reason is kind:
                        tally.as_kind[kind] += 1
    return tally


def table(tally: Tally, seeds: int, seconds: float) -> str:
    lines = [
        f"Synthetic patients: 3 profiles x {seeds} seeds; {tally.correct} correct statements; "
        f"verified in {seconds:.1f} s.",
        "",
        "| error kind | injected | caught | caught % | caught as this kind |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind in KINDS:
        injected, caught = tally.injected[kind], tally.caught[kind]
        share = f"{100 * caught / injected:.1f}" if injected else "n/a"
        lines.append(f"| {kind.value} | {injected} | {caught} | {share} | {tally.as_kind[kind]} |")
    rate = 100 * tally.false_rejections / tally.correct if tally.correct else 0.0
    false = tally.false_rejections
    lines.append(f"| *false rejections of correct statements* | {tally.correct} | {false} | {rate:.2f} | |")
    return "\n".join(lines)


def write_section(body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## Grounding`` section of ``path``, leaving other sections alone."""
    section = (
        "## Grounding\n\nProduced by `bench/grounding.py --write` (hallucination catch rate of "
        "`model.verification.verify_report`).\n\n"
        f"{body}\n\n"
        "Caveat: the correct statements come from templates (dates ISO or in words, units as display or "
        "UCUM code, chosen at random) written by the verifier's author, and each injection changes one "
        "slot; free text from a model words things more ways, so these rates are an upper bound for "
        "catching and a lower bound for false rejections. Laterality has few cases: only one synthetic "
        "record states a side.\n"
    )
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Grounding\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    parser.add_argument("--show-false", action="store_true", help="print falsely rejected statements")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def show(verdict: StatementVerdict) -> None:
        if args.show_false:
            print(f"FALSE {verdict.reason}: {verdict.statement.text} -- {verdict.detail}", file=sys.stderr)

    tally = run(args.seeds, on_false=show)
    body = table(tally, args.seeds, time.perf_counter() - started)
    print(body)
    if args.write:
        write_section(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
