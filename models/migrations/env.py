"""Alembic environment: the URL comes from the config the caller built (models.migrate)."""

from __future__ import annotations

from alembic import context

from models import tables  # noqa: F401  (registers the tables on Base.metadata)
from models.base import Base
from models.db import make_engine

config = context.config
_url = config.get_main_option("sqlalchemy.url")
assert _url, "models.migrate sets sqlalchemy.url"
url: str = _url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        # render_as_batch: SQLite alters tables by copying them; Alembic does that for us.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
