"""Turn a strong rare-disease ranking in a decision trace into a signal for the patient-view card.

Why a separate, strict rule: the ranker always returns a best match, and a card that names a rare disease
for every patient with hypertension would be noise a clinician learns to ignore. A ranking becomes a signal
only when at least ``min_matched`` of the patient's own phenotypes are annotated to the top disease and
they cover at least ``min_coverage`` of the patient's phenotype information (see ``rare_disease``); the
signal cites the records the phenotypes came from and the disease's annotation entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

RANKING_TOOL = "rare_disease_ranking"


class SignalPolicy(BaseModel):
    """When a ranking is strong enough to show."""

    min_phenotypes: int = Field(default=2, ge=1)
    min_matched: int = Field(default=2, ge=1)
    min_coverage: float = Field(default=0.75, ge=0, le=1)
    severity: str = "moderate"


def _rankings(trace: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = []
    for step in trace.get("steps") or []:
        detail = step.get("detail") or {}
        if step.get("kind") != "tool_call" or detail.get("tool") != RANKING_TOOL or not detail.get("ok"):
            continue
        try:
            content = json.loads(detail.get("result") or "")
        except json.JSONDecodeError:
            continue
        if isinstance(content, dict) and isinstance(content.get("ranking"), list):
            found.append(content)
    return found


def signals_from_trace(trace: Mapping[str, Any], policy: SignalPolicy | None = None) -> list[dict[str, Any]]:
    """``report.body["signals"]`` entries for the strong rankings in ``trace`` (the stored trace dict).

    Each is ``{"kind": "rare-disease", "text", "severity", "citations"}``, one per disease (first
    ranking wins); an empty list when no ranking was made or none is strong.
    """
    policy = policy or SignalPolicy()
    signals: list[dict[str, Any]] = []
    seen: set[str] = set()
    for content in _rankings(trace):
        phenotypes = {p["hpo_id"]: p for p in content.get("phenotypes", []) if isinstance(p, dict)}
        if len(phenotypes) < policy.min_phenotypes or not content["ranking"]:
            continue
        top = content["ranking"][0]
        matched = [phenotypes[t] for t in top.get("matched", []) if t in phenotypes]
        if len(matched) < policy.min_matched or float(top.get("coverage", 0)) < policy.min_coverage:
            continue
        if top["id"] in seen:
            continue
        seen.add(top["id"])
        origins = [origin for p in matched for origin in p.get("from", [])]
        names = ", ".join(p["name"] for p in matched)
        text = (
            f"{len(matched)} of the patient's {len(phenotypes)} phenotypes ({names}) are annotated to "
            f"{top['name']} ({top['id']}); phenotype similarity {top['similarity']}, coverage "
            f"{top['coverage']}. Consider whether a clinical genetics review is warranted."
        )
        signals.append(
            {
                "kind": "rare-disease",
                "text": text,
                "severity": policy.severity,
                "citations": [c for c in dict.fromkeys([*origins, str(top.get("evidence_id", ""))]) if c],
            }
        )
    return signals
