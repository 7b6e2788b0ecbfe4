"""Everything the review routes share, built once by ``build_review_router``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi.templating import Jinja2Templates

from audit.ledger import Ledger
from audit.review.config import ReviewConfig
from audit.review.local_users import LocalUsers
from audit.review.model_card import ModelCard
from audit.review.oidc_client import OidcClient
from audit.review.sessions import SessionStore
from audit.review.source import TraceSource
from audit.review.verify_jobs import VerifyJobs

PACKAGE_DIR = Path(__file__).parent


@dataclass
class ReviewState:
    source: TraceSource
    ledger: Ledger
    config: ReviewConfig
    sessions: SessionStore
    oidc: OidcClient | None
    local_users: LocalUsers | None
    model_card: ModelCard
    verify_jobs: VerifyJobs
    templates: Jinja2Templates
