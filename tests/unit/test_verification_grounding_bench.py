"""The grounding benchmark on a small sample: every kind injected and caught, no false rejections."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

from bench.grounding import KINDS, GroundedStatement, Quantity, Style, inject, run, write_section
from model.report import Laterality
from model.verification import RejectionReason


def test_small_run_meets_the_targets() -> None:
    tally = run(2)
    assert tally.correct > 100
    assert tally.false_rejections <= 0.02 * tally.correct
    for kind in KINDS:
        assert tally.injected[kind] > 0, kind
        assert tally.caught[kind] >= 0.95 * tally.injected[kind], kind


def test_injections_change_what_they_say() -> None:
    s = GroundedStatement(
        "Nodule {q0} in the left lung on {d0}.",
        quantities=(Quantity("6", "mm", "mm"),),
        dates=("2026-03-16",),
        citations=("DiagnosticReport/x",),
        laterality=Laterality.LEFT,
    )
    assert s.render().text == "Nodule 6 mm in the left lung on 2026-03-16."
    assert s.render(Style(dates_in_words=True)).text == "Nodule 6 mm in the left lung on 16 March 2026."
    from bench.grounding import Trace
    from model.verification import EvidenceFacts, FactQuantity

    facts = EvidenceFacts(
        resource_type="DiagnosticReport", quantities=[FactQuantity(value=Decimal("6"), unit="mm")]
    )
    trace = Trace([], {"DiagnosticReport/x": facts}, {"DiagnosticReport/x": "ct"}, ["Patient/other"])
    rng = random.Random(1)
    flipped = inject(RejectionReason.LATERALITY_MISMATCH, s, trace, rng)
    assert flipped is not None and "right lung" in flipped.text and flipped.laterality is Laterality.RIGHT
    wrong = inject(RejectionReason.NUMBER_MISMATCH, s, trace, rng)
    assert wrong is not None and "6 mm" not in wrong.text
    assert inject(RejectionReason.NEGATION_MISMATCH, s, trace, rng) is None  # no polarity slot


def test_results_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Ingest\n\nkept\n")
    write_section("first", path)
    write_section("second", path)
    text = path.read_text()
    assert text.count("## Grounding") == 1 and "second" in text and "first" not in text
    assert "## Ingest\n\nkept" in text
