"""leads and timeline events without their account foreign keys; an event's lead checked when deferred

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A lead's owner entity ties it to its account (an entity is of one account), and an event's lead ties
    # the event to it; the account_id columns stay (every index and query starts with them) but are no
    # longer checked against accounts row by row: each check was a trigger call and an index probe per
    # inserted row, a tenth of a lead's insert and a third of an event's. Accounts are never deleted by
    # leadrelay; a lead's events still go with the lead (ON DELETE CASCADE on lead_id).
    with op.batch_alter_table('timeline_events', schema=None) as batch_op:
        batch_op.drop_constraint('fk_timeline_events_account_id_accounts', type_='foreignkey')
    with op.batch_alter_table('leads', schema=None) as batch_op:
        batch_op.drop_constraint('fk_leads_account_id_accounts', type_='foreignkey')
    # An import writes its new leads' events chunk by chunk as it reads the file, and the leads once their
    # routing is settled at its end: the event's lead is checked at the commit there (SET CONSTRAINTS ...
    # DEFERRED), and at once everywhere else, as before (INITIALLY IMMEDIATE).
    _lead_key(deferrable=True)


def _lead_key(*, deferrable: bool) -> None:
    name = 'fk_timeline_events_lead_id_leads'
    if op.get_bind().dialect.name == 'postgresql':
        # Changed in place: no table rewrite, no check of the existing rows.
        op.execute(
            f"ALTER TABLE timeline_events ALTER CONSTRAINT {name} "
            + ('DEFERRABLE INITIALLY IMMEDIATE' if deferrable else 'NOT DEFERRABLE')
        )
        return
    with op.batch_alter_table('timeline_events', schema=None) as batch_op:
        batch_op.drop_constraint(name, type_='foreignkey')
        batch_op.create_foreign_key(
            name,
            'leads',
            ['lead_id'],
            ['id'],
            ondelete='CASCADE',
            deferrable=True if deferrable else None,
            initially='IMMEDIATE' if deferrable else None,
        )


def downgrade() -> None:
    _lead_key(deferrable=False)
    with op.batch_alter_table('leads', schema=None) as batch_op:
        batch_op.create_foreign_key(
            'fk_leads_account_id_accounts', 'accounts', ['account_id'], ['id'], ondelete='CASCADE'
        )
    with op.batch_alter_table('timeline_events', schema=None) as batch_op:
        batch_op.create_foreign_key(
            'fk_timeline_events_account_id_accounts', 'accounts', ['account_id'], ['id'], ondelete='CASCADE'
        )
