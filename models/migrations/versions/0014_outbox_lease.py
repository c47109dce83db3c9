"""outbox lease: a flush claims a batch of mail for a while, and marks each mail as it is sent

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A flush claims up to a batch of due mail in one committed UPDATE (claimed_until: until when the
    # rows are its own), then marks each mail sent (or failed) in one statement as the server takes it.
    # Before, each mail cost a transaction of four round trips that held its row locked through the send.
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_until', models.base.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('claimed_until')
