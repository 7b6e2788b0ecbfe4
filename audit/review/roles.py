"""Who may do what in the compliance review app: roles from the IdP claim, permissions per role.

One table, so that a reviewer of the access policy reads it in one place and the tests walk it pair by
pair. Radiologists review traces and feedback of their cases; only compliance officers and admins see the
ledger, run verification and take exports (exports leave the audited app, so fewer people may take them).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Role(StrEnum):
    """Roles as the hospital IdP names them in the roles claim."""

    COMPLIANCE_OFFICER = "compliance-officer"
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


class Permission(StrEnum):
    """One thing a page or API call lets a reviewer do."""

    VIEW_TRACES = "view-traces"
    VIEW_HOOK_CALLS = "view-hook-calls"
    VIEW_DASHBOARDS = "view-dashboards"
    VIEW_MODEL_CARD = "view-model-card"
    VIEW_LEDGER = "view-ledger"
    VERIFY_LEDGER = "verify-ledger"
    EXPORT = "export"


_EVERY_ROLE = frozenset(Role)
_OVERSIGHT = frozenset({Role.COMPLIANCE_OFFICER, Role.ADMIN})

ROLE_PERMISSIONS: dict[Permission, frozenset[Role]] = {
    Permission.VIEW_TRACES: _EVERY_ROLE,
    Permission.VIEW_HOOK_CALLS: _EVERY_ROLE,
    Permission.VIEW_DASHBOARDS: _EVERY_ROLE,
    Permission.VIEW_MODEL_CARD: _EVERY_ROLE,
    Permission.VIEW_LEDGER: _OVERSIGHT,
    Permission.VERIFY_LEDGER: _OVERSIGHT,
    Permission.EXPORT: _OVERSIGHT,
}


def allows(roles: Iterable[Role], permission: Permission) -> bool:
    """True when any of ``roles`` grants ``permission``."""
    return not ROLE_PERMISSIONS[permission].isdisjoint(roles)


def roles_from_claim(value: object) -> frozenset[Role]:
    """Known roles in an IdP claim value (a list of strings, or one space-separated string).

    Unknown role names are ignored rather than refused: a hospital IdP sends many roles that are not ours.
    """
    if isinstance(value, str):
        names: Iterable[object] = value.split()
    elif isinstance(value, list | tuple):
        names = value
    else:
        return frozenset()
    known = {role.value: role for role in Role}
    return frozenset(known[name] for name in names if isinstance(name, str) and name in known)
