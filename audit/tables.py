"""The ledger's tables. Created only by the migrations in ``audit/migrations``; this is for queries."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

LeafIndex = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""INTEGER PRIMARY KEY on SQLite is the rowid itself: entries are stored in index order."""

entries = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("leaf_index", LeafIndex, primary_key=True, autoincrement=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("patient_ref", sa.String(256)),
    sa.Column("study_uid", sa.String(64)),
    sa.Column("payload_digest", sa.String(71), nullable=False),
    sa.Column("payload", sa.Text),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
)

nodes = sa.Table(
    "audit_nodes",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True),
    sa.Column("node_index", sa.BigInteger, primary_key=True),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
)

payloads = sa.Table(
    "audit_payloads",
    metadata,
    sa.Column("digest", sa.String(71), primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
)

checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False
    ),
    sa.Column("tree_size", sa.BigInteger, nullable=False),
    sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("timestamp_ms", sa.BigInteger, nullable=False, unique=True),
    sa.Column("key_id", sa.String(8), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
)

APPEND_ONLY_TABLES = ("audit_entries", "audit_nodes", "audit_payloads", "audit_checkpoints")
