"""A study too large for the GPU is retried with fewer images, down to one, and then fails loudly.

Out-of-memory cannot be produced on this CPU-only machine with a tiny model, so `draft_report` is replaced by
a stand-in that raises StudyTooLarge above a given image count (the real scheduler's signal).
"""

from __future__ import annotations

from typing import Any

import pytest

from integrations.analysis import pipeline
from model.batching import StudyTooLarge
from model.context import PatientContext
from model.trace import TraceStep


class _Runtime:
    def vlm(self) -> object:
        return object()


def _fake_draft(fits: int, calls: list[int]) -> Any:
    def draft(
        _vlm: object, images: list[str], _context: object, _registry: object, step_sink: Any = None
    ) -> str:
        calls.append(len(images))
        if len(images) > fits:
            raise StudyTooLarge("does not fit")
        return f"drafted with {len(images)}"

    return draft


def test_halves_images_until_the_study_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    steps: list[TraceStep] = []
    registries: list[object] = []

    def make_registry() -> object:
        registries.append(object())  # each attempt must start with a fresh tool budget
        return registries[-1]

    monkeypatch.setattr("model.agent.run_agent", _fake_draft(fits=2, calls=calls))
    result, images = pipeline._draft_within_memory(
        _Runtime(),  # type: ignore[arg-type]
        ["a", "b", "c", "d", "e", "f", "g", "h"],  # type: ignore[list-item]
        PatientContext(patient_id="p"),
        make_registry,  # type: ignore[arg-type]
        steps.append,
    )
    assert calls == [8, 4, 2]
    assert len(registries) == len(set(map(id, registries))) == 3
    assert (result, images) == ("drafted with 2", ["a", "b"])
    assert [s.detail["images"] for s in steps if s.kind == "memory_retry"] == [4, 2]


def test_a_single_image_that_does_not_fit_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("model.agent.run_agent", _fake_draft(fits=0, calls=calls))
    with pytest.raises(StudyTooLarge):
        pipeline._draft_within_memory(
            _Runtime(),  # type: ignore[arg-type]
            ["a", "b", "c"],  # type: ignore[list-item]
            PatientContext(patient_id="p"),
            lambda: None,  # type: ignore[arg-type,return-value]
            lambda _step: None,
        )
    assert calls == [3, 1]
