"""``order-select`` and ``order-sign`` for imaging orders: the four safety checks on each draft order.

Both services share templates and checks; ``order-select`` reviews only the orders just selected
(``context.selections``), ``order-sign`` every draft order about to be signed. A check whose data could
not be obtained (FHIR server down, timed out) is skipped and the reason audited: no card is better than
a card claiming "no allergy" from data we never saw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cds.cards import Card
from cds.discovery import USAGE_REQUIREMENTS, ServiceDefinition
from cds.hook_call import HookCall, HookOutcome
from cds.hook_request import OrderSelectContext, OrderSignContext
from cds.services.imaging_orders import ImagingOrder, draft_imaging_orders
from cds.services.order_safety_checks import (
    CheckContext,
    contrast_allergy_card,
    duplicate_imaging_card,
    pregnancy_card,
    renal_function_card,
)

RENAL_CODES = ",".join(
    f"http://loinc.org|{code}"
    for code in ("62238-1", "98979-8", "33914-3", "48642-3", "48643-4", "2160-0", "38483-4")
)
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "renalLabs": f"Observation?patient={{{{context.patientId}}}}&code={RENAL_CODES}&_sort=-date&_count=20",
    "pregnancy": "Observation?patient={{context.patientId}}&code=http://loinc.org|82810-3,http://loinc.org|11449-6&_sort=-date&_count=5",
    "recentImaging": "ImagingStudy?patient={{context.patientId}}&_sort=-started&_count=50",
}
DESCRIPTION = (
    "Safety checks for imaging orders, computed from the patient's FHIR record: iodinated or gadolinium "
    "contrast allergy, renal function (latest eGFR / creatinine with its date), pregnancy status, and "
    "recent duplicate imaging of the same body region. Each card cites the resources it used and "
    "offers to cancel the order."
)

ORDER_SELECT = ServiceDefinition(
    id="veritrace-imaging-order-select",
    hook="order-select",
    title="Veritrace imaging order safety (on select)",
    description=DESCRIPTION,
    prefetch=PREFETCH,
    usageRequirements=USAGE_REQUIREMENTS,
)
ORDER_SIGN = ServiceDefinition(
    id="veritrace-imaging-order-sign",
    hook="order-sign",
    title="Veritrace imaging order safety (on sign)",
    description=DESCRIPTION,
    prefetch=PREFETCH,
    usageRequirements=USAGE_REQUIREMENTS,
)


def _checks(call: HookCall) -> list[tuple[str, Callable[[ImagingOrder, CheckContext], Card | None]]]:
    p = call.prefetch
    patient_rows = p.get("patient") or []
    patient = patient_rows[0] if patient_rows else None
    checks: list[tuple[str, str, Callable[[ImagingOrder, CheckContext], Card | None]]] = [
        ("allergies", "contrast allergy", lambda o, c: contrast_allergy_card(o, p.get("allergies") or [], c)),
        ("renalLabs", "renal function", lambda o, c: renal_function_card(o, p.get("renalLabs") or [], c)),
        ("pregnancy", "pregnancy", lambda o, c: pregnancy_card(o, p.get("pregnancy") or [], patient, c)),
        (
            "recentImaging",
            "duplicate imaging",
            lambda o, c: duplicate_imaging_card(o, p.get("recentImaging") or [], c),
        ),
    ]
    return [
        (f"{name} check skipped: {key} {p.unavailable[key]}" if key in p.unavailable else "", check)
        for key, name, check in checks
    ]


def review_imaging_orders(call: HookCall) -> HookOutcome:
    context: Any = call.context
    assert isinstance(context, OrderSelectContext | OrderSignContext)
    selections = context.selections if isinstance(context, OrderSelectContext) else None
    orders = draft_imaging_orders(context.draftOrders, selections)
    outcome = HookOutcome()
    if not orders:
        return outcome
    check_context = CheckContext(patient_id=context.patientId, now=call.now)
    for skipped, check in _checks(call):
        if skipped:
            outcome.skipped.append(skipped)
            continue
        for order in orders:
            card = check(order, check_context)
            if card is not None:
                outcome.cards.append(card)
    return outcome
