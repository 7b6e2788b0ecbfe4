"""Validate FHIR resources with fhir.resources before they leave Veritrace.

fhir.resources 8 ships R5 as its default models and R4B as a subpackage, and has no R4 package; R4B
differs from R4 only in resources Veritrace does not use (medicinal product definitions, subscriptions
topics, ...), so R4B is the closest model of the R4 resources we build. sekmet-fhir validates with the
same models, which keeps our check and the server's in agreement.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

from integrations.fhir.errors import FhirValidationError


@cache
def _model(resource_type: str) -> type[BaseModel]:
    try:
        model: type[BaseModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError, ImportError) as exc:
        raise FhirValidationError(resource_type, ["not a FHIR R4 resource type"]) from exc
    return model


def validate_resource(resource: dict[str, Any]) -> None:
    """Raise ``FhirValidationError`` naming each failing element path (never its value)."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise FhirValidationError("resource", ["missing resourceType"])
    resource_type = resource["resourceType"]
    try:
        _model(resource_type).model_validate(resource)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or resource_type}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise FhirValidationError(resource_type, problems) from None
