"""waiting texts index

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING_TEXTS = "status = 'accepted' AND attempts = 0 AND source IN ('sms')"


def upgrade() -> None:
    # Inbound texts are taken in batches as signups are (0010): a batch's claim takes the texts of the
    # account waiting for their first try, oldest first, by a partial index that holds exactly them.
    op.create_index(
        'ix_intakes_waiting_texts',
        'intakes',
        ['account_id', 'created_at'],
        unique=False,
        postgresql_where=sa.text(WAITING_TEXTS),
        sqlite_where=sa.text(WAITING_TEXTS),
    )


def downgrade() -> None:
    op.drop_index('ix_intakes_waiting_texts', table_name='intakes')
