"""The deletion-request store: SQLAlchemy tables with Alembic migrations (`schema`, `migrations`),
opening a store on SQLite or PostgreSQL (`db`), a request's lifecycle with its audit trail
(`lifecycle`), checking a request against the data set (`check`) and the `lethe requests` commands
(`cli`)."""

from lethe.store.db import Store, StoreError, open_store
from lethe.store.lifecycle import RequestRejected

__all__ = ["RequestRejected", "Store", "StoreError", "open_store"]
