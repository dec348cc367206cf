"""deletion requests and their audit trail

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lethe.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletion_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("reference", sa.String(255), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("deadline", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("applied_version", sa.String(32), nullable=True),
        sa.Column("certificate", sa.Text(), nullable=True),
        sa.Column("applied_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_deletion_requests_model_name", "deletion_requests", ["model_name"])
    op.create_index("ix_deletion_requests_status", "deletion_requests", ["status"])
    op.create_table(
        "request_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(36), sa.ForeignKey("deletion_requests.id"), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("from_status", sa.String(20), nullable=True),
        sa.Column("to_status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_request_audit_request_id", "request_audit", ["request_id"])


def downgrade() -> None:
    op.drop_table("request_audit")
    op.drop_table("deletion_requests")
