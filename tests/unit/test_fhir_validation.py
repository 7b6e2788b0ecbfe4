"""validate_resource: fhir.resources (R4B models) checks, errors that name paths but not values."""

from __future__ import annotations

import pytest

from integrations.fhir.errors import FhirValidationError
from integrations.fhir.synthetic import generate_patients
from integrations.fhir.validation import validate_resource


def test_every_synthetic_resource_validates() -> None:
    resources = [r for p in generate_patients() for r in p.resources]
    assert len(resources) > 90
    for resource in resources:
        validate_resource(resource)


def test_invalid_element_is_named_without_its_value() -> None:
    bad = {"resourceType": "Patient", "birthDate": "Secretname-not-a-date"}
    with pytest.raises(FhirValidationError) as err:
        validate_resource(bad)
    assert "birthDate" in str(err.value)
    assert "Secretname" not in str(err.value)


@pytest.mark.parametrize("resource", [{}, {"resourceType": "NotAType"}, {"resourceType": 3}])
def test_unknown_or_missing_type_is_refused(resource: dict) -> None:
    with pytest.raises(FhirValidationError):
        validate_resource(resource)
