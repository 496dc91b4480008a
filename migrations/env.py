"""Alembic environment: runs revisions on the engine Chronos passes in, or on alembic.ini's URL."""

from __future__ import annotations

from alembic import context

from chronos.db import create_engine, resolve_url
from chronos.schema import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    engine = create_engine(resolve_url(config.get_main_option("sqlalchemy.url")), must_exist=False)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,  # SQLite needs table rebuilds for most ALTERs
    )
    with context.begin_transaction():
        context.run_migrations()
