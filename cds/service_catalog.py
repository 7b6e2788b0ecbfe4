"""The services this CDS server offers: definition, the context its hook requires, its card builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from cds.discovery import ServiceDefinition
from cds.hook_call import HookCall, HookOutcome
from cds.hook_request import (
    EncounterDischargeContext,
    OrderSelectContext,
    OrderSignContext,
    PatientViewContext,
)
from cds.services import encounter_discharge, imaging_order_review, patient_view


@dataclass(frozen=True)
class RegisteredService:
    definition: ServiceDefinition
    context_model: type[BaseModel]
    build_cards: Callable[[HookCall], HookOutcome]
    """Runs in a worker thread (it may query the database); must not call a GPU or block on a queue."""


def default_services() -> dict[str, RegisteredService]:
    services = [
        RegisteredService(patient_view.SERVICE, PatientViewContext, patient_view.patient_view_cards),
        RegisteredService(
            imaging_order_review.ORDER_SELECT, OrderSelectContext, imaging_order_review.review_imaging_orders
        ),
        RegisteredService(
            imaging_order_review.ORDER_SIGN, OrderSignContext, imaging_order_review.review_imaging_orders
        ),
        RegisteredService(
            encounter_discharge.SERVICE,
            EncounterDischargeContext,
            encounter_discharge.encounter_discharge_cards,
        ),
    ]
    return {service.definition.id: service for service in services}
