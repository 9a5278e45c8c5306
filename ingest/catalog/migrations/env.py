"""Alembic environment: runs against the connection the catalog hands over."""

from __future__ import annotations

from alembic import context

from ingest.catalog.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through ingest.catalog.Catalog (or `rag db upgrade`)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite needs batch mode for ALTER TABLE
)
with context.begin_transaction():
    context.run_migrations()
