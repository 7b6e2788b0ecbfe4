"""The compliance review web application: who saw which AI trace, on what evidence, and proof of it.

Imports nothing from the rest of Veritrace: the store is reached through the ``TraceSource`` protocol.
"""

from audit.review.config import OidcConfig, ReviewConfig
from audit.review.local_users import hash_password
from audit.review.model_card import ModelCard
from audit.review.reviewer import Reviewer
from audit.review.roles import ROLE_PERMISSIONS, Permission, Role
from audit.review.router import build_review_router
from audit.review.source import TraceSource

__all__ = [
    "ROLE_PERMISSIONS",
    "ModelCard",
    "OidcConfig",
    "Permission",
    "ReviewConfig",
    "Reviewer",
    "Role",
    "TraceSource",
    "build_review_router",
    "hash_password",
]
