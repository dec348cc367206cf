"""Alembic environment of the request store: always run programmatically by lethe.store.db on a
connection it hands over (no alembic.ini, no URL here, so nothing logs one)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from lethe.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Two first runs at once would both create the tables: one waits for the other.
        connection.execute(text("SELECT pg_advisory_xact_lock(727170)"))
    context.run_migrations()
