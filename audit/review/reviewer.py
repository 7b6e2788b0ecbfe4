"""The signed-in person, as every page and API call sees them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from audit.review.roles import Permission, Role, allows


class Reviewer(BaseModel):
    """A staff member signed in through the IdP (``oidc``) or the embedded local-users file (``local``)."""

    model_config = ConfigDict(frozen=True)

    subject: str = Field(min_length=1, max_length=200)
    name: str = Field(max_length=200)
    roles: frozenset[Role]
    via: Literal["oidc", "local"]

    @property
    def actor(self) -> str:
        """How the ledger names this reviewer (the IdP subject, not the display name)."""
        return f"reviewer:{self.via}:{self.subject}"

    def may(self, permission: Permission) -> bool:
        return allows(self.roles, permission)
