"""waiting signups index

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING_SIGNUPS = "status = 'accepted' AND attempts = 0 AND source IN ('registration', 'provider')"


def upgrade() -> None:
    # A batch's claim takes the signups waiting for their first try, per account, oldest first. The
    # (status, updated_at) index holds every waiting intake of every account and source: behind a backlog
    # of texts the claim read them all. A partial index holds exactly what the claim looks for.
    op.create_index(
        'ix_intakes_waiting_signups',
        'intakes',
        ['account_id', 'created_at'],
        unique=False,
        postgresql_where=sa.text(WAITING_SIGNUPS),
        sqlite_where=sa.text(WAITING_SIGNUPS),
    )


def downgrade() -> None:
    op.drop_index('ix_intakes_waiting_signups', table_name='intakes')
