"""The review app's session tables. Created only by ``audit/migrations`` (audit_0002, audit_0003); this is
for queries.

Keys are SHA-256 digests of the values the browser holds (session id cookie, OIDC ``state``), so a copy
of the database opens no session, and the PKCE verifier of a pending sign-in is stored sealed
(``login_sealing``). Times are Unix seconds.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

review_sessions = sa.Table(
    "audit_review_sessions",
    metadata,
    sa.Column("id_sha256", sa.String(64), primary_key=True),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

review_searches = sa.Table(
    "audit_review_searches",
    metadata,
    sa.Column("session_sha256", sa.String(64), primary_key=True),
    sa.Column("token", sa.String(16), primary_key=True),
    sa.Column("filters", sa.Text, nullable=False),
    sa.Column("saved_at", sa.Float, nullable=False),
)

review_logins = sa.Table(
    "audit_review_logins",
    metadata,
    sa.Column("state_sha256", sa.String(64), primary_key=True),
    sa.Column("code_verifier_sealed", sa.Text, nullable=False),
    sa.Column("nonce", sa.String(64), nullable=False),
    sa.Column("return_to", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)
